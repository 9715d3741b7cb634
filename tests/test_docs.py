"""The docs that users read match the code: every config key and every environment override is described, every
link, path, make target, subcommand, config key and module the docs name exists, and every figure they quote equals
the file or the computation that holds it (calibration.json, the plan, the configs)."""

import json
import re

import pytest
import yaml
from mirror import REPO

from scaleaudit import cli, config, cost, devices, plan, settings

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, REPO / "config" / "README.md", *DOCS]
STATISTICS, OPERATIONS, PERFORMANCE = (REPO / "docs" / f"{n}.md" for n in ("statistics", "operations", "performance"))
README_MAX_LINES = 170


def schema_keys(node: dict, schema: dict, path: str = ""):
    """Dotted paths of every key the schema allows: ``<name>`` for user-chosen names, ``[]`` for list items."""
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    for key, sub in node.get("properties", {}).items():
        yield f"{path}.{key}".lstrip(".")
        yield from schema_keys(sub, schema, f"{path}.{key}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_keys(node["additionalProperties"], schema, f"{path}.<name>")
    if isinstance(node.get("items"), dict):
        yield from schema_keys(node["items"], schema, f"{path}[]")
    for branch in node.get("oneOf", []) + node.get("anyOf", []):  # e.g. design.seeds: a count, a list or adaptive
        yield from schema_keys(branch, schema, path)


def code_of(text: str) -> list[str]:
    """The code a page shows: fenced blocks and inline code spans."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    return fenced + re.findall(r"`([^`\n]+)`", prose)


def table_rows(text: str, header: str) -> list[str]:
    """The rows of the Markdown table whose header line is ``header`` (none when there is no such table)."""
    lines = text.splitlines()
    if header not in lines:
        return []
    rows = []
    for line in lines[lines.index(header) + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def assert_table(page, header: str, rows: list[str], source: str) -> None:
    found = table_rows(page.read_text(), header)
    assert found, f"{page.name}: no table with the header {header!r} (it quotes {source})"
    assert found == rows, (
        f"{page.name} quotes {source} wrongly or out of date; the table under {header!r} should read:\n"
        + "\n".join(rows)
    )


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_config_readme_describes_every_key():
    schema = config.schema()
    documented = set(re.findall(r"^\| `([^`]+)` \|", (REPO / "config" / "README.md").read_text(), re.M))
    keys = set(schema_keys(schema, schema))
    assert "arms.<name>.resources.gpu" in keys and "data.datasets[].flag" in keys
    assert not keys - documented, f"describe these keys in config/README.md: {sorted(keys - documented)}"
    assert not documented - keys, (
        f"config/README.md describes keys the schema does not have: {sorted(documented - keys)}"
    )


def test_config_keys_the_docs_name_exist():
    schema = config.schema()
    keys = set(schema_keys(schema, schema))
    sections = {k for k in keys if "." not in k}
    named = set()
    for page in PAGES:
        for code in code_of(page.read_text()):
            for token in re.findall(r"(?<![\w./$-])([a-z_]+(?:\.(?:<[a-z_]+>|[a-z_0-9]+))+)(?![\w/])", code):
                if token.split(".")[0] in sections and not re.search(r"\.(json|csv|yaml|md|npz|py|smk|db)$", token):
                    named.add((page.relative_to(REPO).as_posix(), re.sub(r"<[a-z_]+>", "<name>", token)))
    assert {key for _, key in named} >= {"shift.enabled", "hardware.device", "arms.<name>.resources.runs_per_gpu"}
    unknown = sorted((page, key) for page, key in named if not any(k == key or k.startswith(f"{key}.") for k in keys))
    assert not unknown, f"the docs name config keys the schema does not have: {unknown}"


def test_operations_env_table_lists_every_override_with_its_key():
    rows = set(re.findall(r"^\| `([A-Z_]+)` \| `([a-z_.]+)` \|", OPERATIONS.read_text(), re.M))
    assert rows == {(s.env, s.key) for s in settings.SETTINGS}


def test_study_design_is_in_the_repository_and_linked():
    study = (REPO / "docs" / "study.md").read_text()
    for section in ("question", "design", "protocols", "metric", "published"):
        assert re.search(rf"^#+ .*{section}", study, re.I | re.M), section
    assert "(docs/study.md)" in README.read_text()
    assert "docs/study.md" in (REPO / "workflow" / "report" / "workflow.rst").read_text()


def test_study_tables_are_the_published_numbers_the_report_uses():
    from scaleaudit import published

    doc = (REPO / "docs" / "study.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \| (\w+) \| (\d+) \| ([\d.]+|–) \| ([\d.]+) \|", doc, re.M)
    assert {(i, d, int(s), None if auc == "–" else float(auc), float(acc)) for i, d, s, auc, acc in rows} == {
        (r["id"], r["dataset"], r["size"], r["auc"], r["acc"]) for r in published.rows()
    }  # –: no AUC published (kNN)


def test_operations_says_which_studies_score_medmnist_c():
    files = ["config/config.yaml", "config/demo.yaml", ".test/config/config.yaml", "config/test.yaml"]
    on = {f: yaml.safe_load((REPO / f).read_text()).get("shift", {}).get("enabled") for f in files}
    text = " ".join(OPERATIONS.read_text().split())
    claim = (
        "`shift.enabled: true` in `config/config.yaml`, as in the demo and the `.test` study (only "
        "`config/test.yaml`, the Slurm test, turns it off)"
    )
    assert claim in text and on == dict.fromkeys(files[:3], True) | {"config/test.yaml": False}, (
        f"docs/operations.md says which configs turn MedMNIST-C on; they are {on}"
    )


def test_readme_is_short_and_points_to_every_document():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, (
        f"README.md is over {README_MAX_LINES} lines: move detail to docs/"
    )
    for page in DOCS:
        assert f"(docs/{page.name}" in text, f"README.md does not link docs/{page.name}"


def test_links_resolve_to_files_and_headings():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):  # http(s), mailto
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append((page.relative_to(REPO).as_posix(), target, "no such file"))
            elif anchor and dest.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", dest.read_text(), re.M)
                if anchor not in {slug(h) for h in headings}:
                    broken.append((page.relative_to(REPO).as_posix(), target, "no such heading"))
    assert not broken, broken


def test_make_targets_the_docs_name_exist():
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", (REPO / "Makefile").read_text(), re.M))
    named = {
        (page.relative_to(REPO).as_posix(), t)
        for page in PAGES
        for code in code_of(page.read_text())
        for t in re.findall(r"(?:^|\s)make ([a-z][a-z0-9-]*)", code, re.M)
    }
    assert {"demo", "test"} <= {t for p, t in named if p == "README.md"}
    missing = sorted((p, t) for p, t in named if t not in targets)
    assert not missing, f"the docs name make targets the Makefile does not have: {missing}"


def test_subcommands_the_docs_name_exist():
    (sub,) = (a for a in cli.parser()._actions if a.dest == "command")
    named = {
        (page.relative_to(REPO).as_posix(), c)
        for page in PAGES
        for code in code_of(page.read_text())
        for c in re.findall(r"(?:^|[\s/])scaleaudit ([a-z][a-z-]*)", code, re.M)
    }
    assert {"plan", "validate-config"} <= {c for _, c in named}
    missing = sorted((p, c) for p, c in named if c not in sub.choices)
    assert not missing, f"the docs name scaleaudit subcommands the CLI does not have: {missing}"


def test_repository_paths_the_docs_name_exist():
    roots = r"(?:src|tests|benchmarks|config|envs|workflow|docs|\.test|\.ci)/"
    missing = []
    for page in PAGES:
        for code in code_of(page.read_text()):
            for path in re.findall(rf"(?<![\w./-])({roots}[\w./-]*[\w/])", code):
                if not (REPO / path).exists():
                    missing.append((page.relative_to(REPO).as_posix(), path))
    assert not missing, f"the docs name files that do not exist: {missing}"


def test_readme_names_every_module_of_the_package_and_no_other():
    text = README.read_text()
    header = "| role | modules |"
    table = "\n".join(table_rows(text, header))
    assert table, f"README.md: no package table with the header {header!r}"
    named = set(re.findall(r"`([\w/]+)`", table))
    package = REPO / "src" / "scaleaudit"
    modules = {p.relative_to(package).with_suffix("").as_posix() for p in package.rglob("*.py")}
    modules -= {"__init__", "report/__init__"}
    assert not modules - named, f"README.md's package table leaves out {sorted(modules - named)}"
    named -= {"report/templates"}  # the prose's folder
    assert not named - modules, f"README.md names modules that do not exist: {sorted(named - modules)}"
    shipped = {p.name for p in package.glob("*.json")} | {p.name for p in package.glob("*.yaml")}
    assert shipped <= set(re.findall(r"`([\w.]+\.(?:json|yaml))`", table)), "name the data files the package ships"


def validated(capsys, *configs: str) -> int:
    """The training runs ``scaleaudit validate-config`` counts for the configs merged in order."""
    assert cli.main(["validate-config", *(str(REPO / "config" / c) for c in configs)]) == 0
    return int(re.search(r"(\d+) training runs", capsys.readouterr().out).group(1))


def test_readme_figures_of_the_full_study_and_the_demo_are_the_configs(capsys):
    text = " ".join(README.read_text().split())
    full = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    sizes = sorted({s for d in full["data"]["datasets"] for s in d["sizes"]})
    fractions = [f"{f:g}" for f in full["design"]["fractions"]]
    for quoted in (
        f"crosses {len(full['data']['datasets'])} MedMNIST 2D datasets at {'/'.join(map(str, sizes))} px",
        f"{len(full['design']['arms'])} arms, training fractions {', '.join(fractions[:-1])} and {fractions[-1]}",
        f"and {full['design']['seeds']} seeds: {validated(capsys, 'config.yaml'):,} runs",
        f"with {len(demo['design']['arms'])} arms",
        f"{demo['design']['seeds']} seeds and short recipes",
        f"make {validated(capsys, 'config.yaml', 'demo.yaml')} training runs",
    ):
        assert quoted in text, f"README.md should say {quoted!r} (from config/)"


# --- figures quoted from the files that hold them -------------------------------------------------------------------


def pct(x: float) -> str:
    return f"{x:.1%}"


def calibration_tables() -> dict[str, list[str]]:
    """The tables docs/statistics.md quotes from src/scaleaudit/calibration.json, exactly as they must read."""
    cal = json.loads((REPO / "src" / "scaleaudit" / "calibration.json").read_text())
    cell = [
        f"| {r['noise']} | {r['seeds']} | {pct(r['coverage'])} | {pct(r['false_better'])} | {pct(r['false_worse'])} "
        f"| {pct(r['false_equivalent'])} | {pct(r['power_0.02'])} | {pct(r['power_0.05'])} "
        f"| {pct(r['equivalent_at_0'])} |"
        for r in cal["cell"]
    ]
    study = {(r["noise"], r["seeds"]): r for r in cal["study"]}
    (tasks,), (arms,) = {r["tasks"] for r in cal["tasks"]}, {r["arms"] for r in cal["study"]}
    summary = [
        f"| {r['noise']} | {r['seeds']} | {pct(r['coverage'])} | {pct(r['false_better'])} "
        f"| {pct(study[r['noise'], r['seeds']]['false_scale_pays'])} |"
        for r in cal["tasks"]
    ]
    adaptive = [
        f"| {r['method'].replace('_', ' ')} | {r['noise']} | {r['true_diff']:+.2f} | {pct(r['coverage'])} "
        f"| {pct(r['better'])} | {pct(r['equivalent'])} | {pct(r['worse'])} | {pct(r['undecided'])} "
        f"| {r['mean_seeds']:.1f} |"
        for r in cal["sequential"]["rows"]
        if "family" not in r
    ]
    divergence = [
        f"| {r['rate']:.0%} | {r['rule']} | {pct(r['coverage'])} | {pct(r['false_better'])} | {pct(r['power_0.05'])} |"
        for r in cal["divergence"]
    ]

    def seeds(r) -> str:
        return f"{r['seeds'][0]}–{r['seeds'][-1]}" if isinstance(r["seeds"], list) else str(r["seeds"])

    scenarios = [
        f"| {r['scenario']} | {seeds(r)} "
        + "".join(f"| {pct(r[k]) if k in r else '–'} " for k in ("coverage", "false_better", "power_0.05", "fdr"))
        + "|"
        for r in cal["scenarios"]
    ]
    return {
        '| scenario | seeds | coverage | false "better" | "better" at +0.05 | false discoveries |': scenarios,
        '| divergence | rule | coverage | false "better" | "better" at +0.05 |': divergence,
        '| noise | seeds | coverage at +0.02 | "better" at +ROPE | "worse" at −ROPE | "equivalent" at +ROPE '
        '| "better" at +0.02 | "better" at +0.05 | "equivalent" at 0 |': cell,
        f'| noise | seeds | coverage, {tasks} tasks | "better", {tasks} tasks | "Scale pays", {arms} arms |': summary,
        '| method | noise | true gain | coverage at stopping | "better" | "equivalent" | "worse" | undecided '
        "| mean seeds |": adaptive,
    }


def test_statistics_quotes_calibration_json():
    for header, rows in calibration_tables().items():
        assert_table(STATISTICS, header, rows, "src/scaleaudit/calibration.json")
    cal = json.loads((REPO / "src" / "scaleaudit" / "calibration.json").read_text())
    q, conf = cal["sequential"]["seeds"], cal["confidence"]
    seeds = sorted({r["seeds"] for r in cal["cell"]})
    text = " ".join(STATISTICS.read_text().split())
    for quoted in (
        f"paired differences with an sd of {cal['seed_sd']:g} per seed",
        f"{', '.join(map(str, seeds[:-1]))} and {seeds[-1]} seeds",
        f"At {conf:.0%} confidence the nominal levels are a coverage of {conf:.0%} and at most {(1 - conf) / 2:.1%}",
        f'says "Scale pays" (nominal: at most {1 - conf:.0%})',
        f"rounds of {q['initial']}, {q['initial'] + q['step']}, …, {q['max']} seeds, `{q['spending']}` spending, "
        f"sd {cal['seed_sd']:g} per paired difference",
        f"At a true gain of +{cal['rope']:g} (the ROPE edge)",
    ):
        assert quoted in text, f"docs/statistics.md should say {quoted!r} (calibration.json)"


def test_statistics_states_the_defaults_the_code_has():
    from scaleaudit import stats

    verdict = {k: v["default"] for k, v in config.schema()["properties"]["verdict"]["properties"].items()}
    text = " ".join(STATISTICS.read_text().split())
    for quoted in (
        f"by default the test {verdict['metric'].upper()}, a region of practical equivalence (ROPE) of "
        f"±{verdict['rope']:g} and {verdict['confidence']:.0%} confidence",
        f"No comparison is decided on fewer than {stats.MIN_PAIRS} pairs",
    ):
        assert quoted in text, f"docs/statistics.md should say {quoted!r} (the code's defaults)"


PLAN_GPU = "NVIDIA H100 80GB HBM3"


@pytest.fixture(scope="module")
def full_plan(tmp_path_factory) -> dict:
    """The plan of config/config.yaml as performance.md quotes it: GPU arms from FLOPs on PLAN_GPU (no timing, so
    the same on every machine)."""
    out = tmp_path_factory.mktemp("plan") / "plan.json"
    argv = ["plan", str(REPO / "config" / "config.yaml"), "--calibration-steps", "0", "--gpu", PLAN_GPU]
    assert cli.main([*argv, "--out", str(out), "--brief"]) == 0
    return json.loads(out.read_text())


def plan_tables(plan: dict) -> dict[str, list[str]]:
    """The tables docs/performance.md quotes from the plan, exactly as they must read."""
    gpu = [r for r in plan["rows"] if r["device"] != "cpu"]
    arms = list(dict.fromkeys(r["arm"] for r in gpu))
    flops = sum(r["flops"] for r in gpu)
    hours = sum(r["device_hours"] for r in gpu)

    def total(rows, key):
        return sum(r[key] for r in rows)

    per_arm = []
    for arm in arms:
        rows = [r for r in gpu if r["arm"] == arm]
        per_arm.append(
            f"| {arm} | {total(rows, 'runs')} | {rows[0]['epochs']} | {total(rows, 'flops') / 1e18:.2f} "
            f"| {total(rows, 'flops') / flops:.0%} | {total(rows, 'train_hours'):.1f} | {total(rows, 'knn_hours'):.2g} "
            f"| {total(rows, 'shift_hours'):.1f} | {total(rows, 'device_hours'):.1f} | {total(rows, 'energy_kwh'):.1f} |"
        )
    per_arm.append(
        f"| **GPU arms** | **{total(gpu, 'runs')}** | | **{flops / 1e18:.1f}** | | **{total(gpu, 'train_hours'):.1f}** "
        f"| **{total(gpu, 'knn_hours'):.2g}** | **{total(gpu, 'shift_hours'):.1f}** | **{hours:.1f}** "
        f"| **{total(gpu, 'energy_kwh'):.1f}** |"
    )
    datasets = list(dict.fromkeys(r["dataset"] for r in gpu))
    per_dataset = [
        f"| {d} | {total([r for r in gpu if r['dataset'] == d], 'device_hours'):.1f} "
        f"| {total([r for r in gpu if r['dataset'] == d], 'device_hours') / hours:.0%} |"
        for d in datasets
    ]
    return {
        "| arm | runs | epochs | EFLOPs | share of FLOPs | training | kNN votes | shift | H100-hours | kWh |": per_arm,
        "| dataset | H100-hours | share |": per_dataset,
    }


def test_performance_quotes_the_plan_of_the_full_study(full_plan):
    assert full_plan["gpu"] == PLAN_GPU
    for header, rows in plan_tables(full_plan).items():
        assert_table(PERFORMANCE, header, rows, f"scaleaudit plan config/config.yaml --gpu '{PLAN_GPU}'")


def constant(name: str):
    """A constant of the cost model, wherever it lives (plan.py or cost.py)."""
    return next(getattr(m, name) for m in (cost, plan, devices) if hasattr(m, name))


def test_performance_states_the_plans_method_as_the_code_has_it():
    (sub,) = (a for a in cli.parser()._actions if a.dest == "command")
    defaults = {a.dest: a.default for a in sub.choices["plan"]._actions}
    text = " ".join(PERFORMANCE.read_text().split())
    for quoted in (
        f"(`--calibration-steps`, {defaults['calibration_steps']} by default)",
        f"(`--utilization`, {defaults['utilization']:.0%} by default;",
        f"({round(constant('LAUNCH_S') * 1e6, 3):g} µs of host time per ATen op)",
        f"Each run adds {constant('STARTUP_S'):g} s of start-up",
        f"an assumed {constant('CPU_WATTS_PER_THREAD'):g} W per thread",
        f"validation score, {constant('TYPICAL_BEST_SHARE'):.0%} of its epochs",
        f"at an assumed {constant('KNN_GPU_FLOPS') / 1e12:g} TFLOP/s on a GPU",
    ):
        assert quoted in text, f"docs/performance.md should say {quoted!r} (from the code)"


def test_the_demo_time_is_one_measurement():
    measured = re.search(r"took (\d+) min (\d+) s", PERFORMANCE.read_text())
    assert measured, "docs/performance.md should give the demo's measured time"
    minutes = round(int(measured[1]) + int(measured[2]) / 60)
    for page in (README, REPO / "config" / "demo.yaml"):
        quoted = re.findall(r"about (\d+) minutes", page.read_text())
        assert quoted and {int(q) for q in quoted} == {minutes}, f"{page.name}: the demo takes about {minutes} minutes"
