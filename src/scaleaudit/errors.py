"""The one exception type users see: what is wrong and how to fix it."""


class ScaleauditError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")
