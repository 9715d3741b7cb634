"""Software environments: the conda env of the rules, the lock file and the package metadata agree."""

import ast
import re
import tomllib

import yaml
from mirror import REPO

import scaleaudit

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")


def _lock() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "envs" / "requirements.lock.txt").read_text(), re.M)
    return {_name(n): v for n, v in pins}


def test_conda_env_installs_this_package_pinned_to_the_lock():
    env = yaml.safe_load((REPO / "envs" / "scaleaudit.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip[0] == f"scaleaudit[report]=={scaleaudit.__version__}"  # the package itself, not a path
    direct = PROJECT["dependencies"] + PROJECT["optional-dependencies"]["report"]
    lock = _lock()
    assert pip[1:] == [f"{_name(d)}=={lock[_name(d)]}" for d in direct]
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert PROJECT["requires-python"] == ">=" + python.split("=")[1]
    assert not (REPO / "envs" / "scaleaudit.post-deploy.sh").exists()


def test_lock_pins_every_dependency_within_its_range():
    from packaging.requirements import Requirement

    lock = _lock()
    for extra in ("workflow", "report", "test"):
        for text in PROJECT["dependencies"] + PROJECT["optional-dependencies"][extra]:
            req = Requirement(text)
            assert _name(req.name) in lock, f"{req.name} is not in the lock: run `make lock`"
            assert req.specifier.contains(lock[_name(req.name)], prereleases=True), (
                f"lock {lock[_name(req.name)]} outside {req}"
            )
        assert "==" not in "".join(PROJECT["dependencies"])  # ranges in pyproject, pins only in the lock


def test_corruption_env_is_pinned_to_its_lock():
    """envs/medmnistc.yaml (conda) installs what envs/medmnistc.lock.txt (make medmnistc-env) pins."""
    env = yaml.safe_load((REPO / "envs" / "medmnistc.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    lock = {
        _name(n): v
        for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "envs" / "medmnistc.lock.txt").read_text(), re.M)
    }
    assert pip[0] == f"scaleaudit=={scaleaudit.__version__}"
    assert all(lock[_name(p)] == p.split("==")[1] for p in pip[1:]), pip
    assert {"medmnistc", "numpy", "scikit-image", "wand"} <= {_name(p) for p in pip[1:]}


def test_every_imported_distribution_is_declared():
    imports = set()
    for path in (REPO / "src" / "scaleaudit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):  # statements, not docstrings that start "from their..."
            if isinstance(node, ast.Import):
                imports |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                imports.add(node.module.split(".")[0])
    stdlib = __import__("sys").stdlib_module_names
    third_party = {m for m in imports if m not in stdlib and m != "scaleaudit"}
    dist = {"yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow"}
    declared = {_name(d) for extra in PROJECT["optional-dependencies"].values() for d in extra}
    declared |= {_name(d) for d in PROJECT["dependencies"]}
    missing = {dist.get(m, m).replace("_", "-") for m in third_party} - declared
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_version_license_and_citation_agree():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["version"] == scaleaudit.__version__ and citation["license"] == "MIT" == PROJECT["license"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
