"""Scenario 1: the generated CRDs install; examples apply; invalid examples are refused as they say."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from controlplane import install_crds, kubectl

REPO = Path(__file__).resolve().parent.parent
INVALID = sorted((REPO / "examples" / "invalid").glob("*.yaml"))


def header(path: Path, key: str) -> list[str]:
    return re.findall(rf"^# {key}: (.+)$", path.read_text(), flags=re.MULTILINE)


@pytest.fixture(scope="module")
def crds(admin: Path) -> Path:
    install_crds(admin, "support", "invalid-examples")
    time.sleep(1)  # discovery catches up with the new CRDs
    return admin


def test_examples_apply_and_print_columns(crds: Path) -> None:
    result = kubectl(crds, "apply", "-f", str(REPO / "examples"))
    assert (
        "costpolicy.tokenomy.dev/support-agent created" in result.stdout
        or "configured" in result.stdout
    )
    table = kubectl(crds, "get", "costpolicies", "-n", "support").stdout
    assert table.split("\n")[0].split() == [
        "NAME",
        "READY",
        "ROUTES",
        "BUDGET",
        "SPEND",
        "USED",
        "SAVED",
        "HIT",
        "RATE",
        "SIDECARS",
        "AGE",
    ]
    assert "support-agent" in table  # its BUDGET and SPEND come from status.display: no
    # operator writes one here (e2e/test_node_cluster.py checks them)
    short = kubectl(crds, "get", "cpol,mroute", "-n", "support").stdout
    assert "modelroute.tokenomy.dev/support-chat" in short
    category = kubectl(crds, "get", "tokenomy", "-n", "support").stdout
    assert "support-agent" in category
    assert "support-chat" in category


@pytest.mark.parametrize(
    "path", [p for p in INVALID if header(p, "caught-by") != ["compiler"]], ids=lambda p: p.stem
)
def test_invalid_examples_are_refused_by_the_api_server(crds: Path, path: Path) -> None:
    result = kubectl(crds, "apply", "-f", str(path), check=False)
    assert result.returncode != 0, result.stdout
    if header(path, "caught-by") == ["cel"]:
        # The API server prints the rule's message: the same words the compiler uses.
        for expected in header(path, "expect"):
            assert expected.rsplit(": ", 1)[-1] in result.stderr, result.stderr


@pytest.mark.parametrize(
    "path", [p for p in INVALID if header(p, "caught-by") == ["compiler"]], ids=lambda p: p.stem
)
def test_compiler_only_examples_are_stored(crds: Path, path: Path) -> None:
    result = kubectl(crds, "apply", "-f", str(path), check=False)
    assert result.returncode == 0, result.stderr
    kubectl(crds, "delete", "-f", str(path), "--wait=false", check=False)
