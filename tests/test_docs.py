"""The docs that users read match the code: every config key and every environment override is described."""

import re

from conftest import REPO

from scaleaudit import config, settings


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


def test_config_readme_describes_every_key():
    schema = config.schema()
    documented = set(re.findall(r"^\| `([^`]+)` \|", (REPO / "config" / "README.md").read_text(), re.M))
    keys = set(schema_keys(schema, schema))
    assert "arms.<name>.resources.gpu" in keys and "data.datasets[].flag" in keys
    assert not keys - documented, f"describe these keys in config/README.md: {sorted(keys - documented)}"
    assert not documented - keys, (
        f"config/README.md describes keys the schema does not have: {sorted(documented - keys)}"
    )


def test_readme_env_table_lists_every_override_with_its_key():
    readme = (REPO / "README.md").read_text()
    rows = set(re.findall(r"^\| `([A-Z_]+)` \| `([a-z_.]+)` \|", readme, re.M))
    assert rows == {(s.env, s.key) for s in settings.SETTINGS}


def test_study_design_is_in_the_repository_and_linked():
    study = (REPO / "docs" / "study.md").read_text()
    for section in ("question", "design", "protocols", "metric", "published"):
        assert re.search(rf"^#+ .*{section}", study, re.I | re.M), section
    assert "docs/study.md" in (REPO / "README.md").read_text()
    assert "docs/study.md" in (REPO / "workflow" / "report" / "workflow.rst").read_text()


def test_study_tables_are_the_published_numbers_the_report_uses():
    from scaleaudit import published

    doc = (REPO / "docs" / "study.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \| (\w+) \| (\d+) \| ([\d.]+|–) \| ([\d.]+) \|", doc, re.M)
    assert {(i, d, int(s), None if auc == "–" else float(auc), float(acc)) for i, d, s, auc, acc in rows} == {
        (r["id"], r["dataset"], r["size"], r["auc"], r["acc"]) for r in published.rows()
    }  # –: no AUC published (kNN)
