"""The shipped alert rules and dashboard: valid, unit-tested, and in step with the code."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenomy_api.costpolicy import ALERT_DEFAULT_THRESHOLDS
from tokenomy_operator.metrics import OperatorMetrics
from tokenomy_sidecar.metrics import Metrics

from support import REPO

MONITORING = REPO / "manifests" / "monitoring"
RULE = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed (.ci/run installs Debian's prometheus)")
    return found


def test_rules_pass_promtool_check_and_unit_tests(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(RULE["spec"]))
    shutil.copy(REPO / "tests" / "promtool" / "alerts-test.yaml", tmp_path)
    check = subprocess.run(
        [promtool(), "check", "rules", "rules.yaml"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 9 rules found" in check.stdout
    test = subprocess.run(
        [promtool(), "test", "rules", "alerts-test.yaml"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert test.returncode == 0, test.stdout + test.stderr


def alert(name: str) -> dict[str, Any]:
    rules = [r for group in RULE["spec"]["groups"] for r in group["rules"]]
    return next(r for r in rules if r.get("alert") == name)


@pytest.mark.parametrize(
    ("name", "default", "pattern", "scale"),
    [
        ("TokenomyCostSpike", "cost_spike", r"> ([\d.]+) \*", lambda v: (v - 1) * 100),
        ("TokenomyTokensPerRequestUp", "tokens_per_request", r"> ([\d.]+) \*",
         lambda v: (v - 1) * 100),
        ("TokenomyCacheHitRateDrop", "cache_hit_drop", r"- ([\d.]+)\s*$", lambda v: v * 100),
        ("TokenomyLargestTierShift", "large_tier_shift", r"\+ ([\d.]+)\s*$", lambda v: v * 100),
    ],
)  # fmt: skip
def test_shipped_thresholds_are_the_policy_defaults(
    name: str, default: str, pattern: str, scale: Any
) -> None:
    match = re.search(pattern, alert(name)["expr"].strip())
    assert match is not None, alert(name)["expr"]
    assert round(scale(float(match.group(1)))) == ALERT_DEFAULT_THRESHOLDS[default]


def metric_names(expr: str) -> set[str]:
    """Metric and recording-rule names a PromQL expression reads."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    names = set(re.findall(r"\b(tokenomy[:_][a-z0-9_:]+)\b", without_labels))
    return names


def known_names() -> set[str]:
    names = set()
    registries = (Metrics().registry, OperatorMetrics().registry)
    for family in (f for registry in registries for f in registry.collect()):
        kind = family.type
        names.add(family.name + ("_total" if kind == "counter" else ""))
    records = {r["record"] for g in RULE["spec"]["groups"] for r in g["rules"] if "record" in r}
    return names | records


def test_rules_and_dashboard_read_only_metrics_that_exist() -> None:
    known = known_names()
    exprs = [r["expr"] for g in RULE["spec"]["groups"] for r in g["rules"]]
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used, "no metric names found: the pattern is broken"
    assert used <= known, sorted(used - known)
