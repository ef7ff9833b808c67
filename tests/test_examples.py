"""The shipped examples: the valid ones compile, each invalid one fails as its header says."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenomy_api.compiler import compile_configs
from tokenomy_api.crd import CRDS, openapi_schema
from tokenomy_api.loader import load_resources

from helpers import expectations
from support import EXAMPLES, INVALID

INVALID_FILES = sorted(INVALID.glob("*.yaml"))


def _problems(path: Path) -> tuple[list[str], bool]:
    """Problem lines for one file (without the file name), and whether parsing passed."""
    resources = load_resources([path])
    compilation = compile_configs(resources.policies, resources.routes)
    lines = [str(p).removeprefix(f"{path}: ") for p in resources.problems]
    lines += [str(p) for p in compilation.problems]
    return lines, not resources.problems


def _cel_messages() -> set[str]:
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            found.update(v["message"] for v in node.get("x-kubernetes-validations", []))
            for value in node.values():
                walk(value)

    for spec in CRDS:
        walk(openapi_schema(spec.model))
    return found


def test_valid_examples_compile_without_problems() -> None:
    resources = load_resources([EXAMPLES])
    compilation = compile_configs(resources.policies, resources.routes)
    assert resources.problems == []
    assert compilation.problems == []
    assert set(compilation.configs) == {"support/support-agent"}
    assert {s.name for s in resources.secrets} == {"openai-credentials", "azure-openai-credentials"}


def test_there_is_an_invalid_example_for_every_kind_of_check() -> None:
    kinds = {expectations(p, "caught-by")[0] for p in INVALID_FILES}
    assert kinds == {"schema", "cel", "compiler"}


@pytest.mark.parametrize("path", INVALID_FILES, ids=lambda p: p.stem)
def test_invalid_example_fails_exactly_as_its_header_says(path: Path) -> None:
    expected = expectations(path, "expect")
    caught_by = expectations(path, "caught-by")
    assert expected, f"{path.name} has no '# expect:' line"
    assert len(caught_by) == 1
    lines, parsed = _problems(path)
    assert sorted(lines) == sorted(expected)
    # Compiler-only problems must get past the schema; the others must not.
    assert parsed == (caught_by[0] == "compiler")
    if caught_by[0] == "cel":
        # The API server will print the same words, from the CRD's rule.
        assert all(line.rsplit(": ", 1)[-1] in _cel_messages() for line in expected)


def test_local_example_compiles_for_a_laptop_sidecar() -> None:
    resources = load_resources([EXAMPLES / "local"])
    compilation = compile_configs(resources.policies, resources.routes)
    assert compilation.problems == []
    assert list(compilation.configs) == ["default/laptop"]
