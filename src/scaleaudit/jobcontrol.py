"""A job's ties to its surroundings: one trainer per run folder, none outliving its workflow, SIGTERM as an exit.

Snakemake runs a job as ``bash -c "scaleaudit train ... > log"``: when Snakemake is killed outright
(SIGKILL, an OOM kill, a lost login session) nothing tells the job, which would train on and collide
with the trainer of the next run. So a job watches the processes that started it and stops (as on
SIGTERM: checkpoint kept, MLflow run marked KILLED) once one of them is gone; and it holds a lock on
its run folder, so that a second trainer of the same run refuses to start.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import ScaleauditError

LOCK_FILE = ".trainer.lock"
PR_SET_PDEATHSIG = 1
WATCH_EVERY_S = 1.0
# The shell that runs the job and the workflow (Snakemake) above it; not further up, where a login
# shell may end while a `nohup snakemake` carries on.
WATCHED_GENERATIONS = 2
_watching = False  # one watcher per process


@contextlib.contextmanager
def locked_run_folder(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (flock: released by the kernel when the process dies)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise ScaleauditError(
                f"run folder {folder} is in use by another trainer (pid {holder})",
                "wait for it to finish, or stop it (kill <pid>) and run the step again: it resumes from the checkpoint",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a waiting trainer)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (tells a live process from a reused pid), None when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has ended, unreaped


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def ancestors(generations: int) -> list[tuple[int, str]]:
    """(pid, start time) of the ``generations`` processes above this one (fewer where init comes first)."""
    chain, pid = [], os.getppid()
    while pid > 1 and len(chain) < generations:
        start = _start_time(pid)
        if start is None:
            break
        chain.append((pid, start))
        try:
            pid = _parent(pid)
        except OSError:
            break
    return chain


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def die_with_parents(log=_log) -> None:
    """Stop this process (SIGTERM to itself) when any process that started it ends. Linux only.

    The kernel's parent-death signal covers the direct parent at once; a watcher thread covers the
    one above it too (Snakemake sits above the shell that runs the job).
    """
    global _watching
    if _watching or not sys.platform.startswith("linux"):
        return
    _watching = True
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    watched = ancestors(WATCHED_GENERATIONS)
    if not watched:  # started by init itself (a container's entry point): nothing to outlive
        return

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(WATCH_EVERY_S):
            for pid, start in watched:
                if _start_time(pid) != start:
                    log(f"process {pid} that started this job has ended (the workflow was stopped): stopping")
                    os.kill(os.getpid(), signal.SIGTERM)
                    return

    threading.Thread(target=watch, name="watch-workflow", daemon=True).start()


def stop_with_workflow() -> None:
    """What every long step calls first: SIGTERM is an exit (outputs are written atomically, so none is left half
    written), and the step stops when the workflow that started it does."""
    exit_on_sigterm()
    die_with_parents()


class Terminated(SystemExit):
    """SIGTERM arrived: Slurm preempting or cancelling the job (it sends SIGKILL KillWait seconds later)."""


def exit_on_sigterm() -> None:
    """Turn SIGTERM into an exception, so the job stops like a failure instead of vanishing.

    Temporary files are removed and the MLflow run is marked KILLED; the checkpoint of the last
    finished epoch stays, and the requeued job resumes from it. Call it from the main thread.
    """

    def handler(signum, frame):
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, handler)
