"""The ``tokenomy`` command as a user runs it: exit codes, output, no tracebacks."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from support import EXAMPLES, INVALID, REPO


def tokenomy(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("tokenomy")
    assert exe, "the console script is installed by `pip install -e .`"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, check=False)


def test_compile_examples_prints_the_configs() -> None:
    result = tokenomy("compile", "-f", "examples/")
    assert result.returncode == 0, result.stderr
    configs = json.loads(result.stdout)
    assert list(configs) == ["support/support-agent"]
    config = configs["support/support-agent"]
    assert len(config["version"]) == 16
    assert [r["model"] for r in config["routes"]] == ["support-chat"]
    assert result.stderr == ""


def test_compile_is_deterministic_across_processes() -> None:
    assert (
        tokenomy("compile", "-f", "examples/").stdout
        == tokenomy("compile", "-f", "examples").stdout
    )


def test_compile_accepts_several_files() -> None:
    files = [str(p) for p in sorted(EXAMPLES.glob("*.yaml"))]
    args = [a for f in files for a in ("-f", f)]
    assert json.loads(tokenomy("compile", *args).stdout).keys() == {"support/support-agent"}


@pytest.mark.parametrize("path", sorted(INVALID.glob("*.yaml")), ids=lambda p: p.stem)
def test_compile_invalid_exits_2_with_one_line_per_problem(path: Path) -> None:
    result = tokenomy("compile", "-f", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    expected = [
        f"{path}: {line}" for line in path.read_text().splitlines() if line.startswith("# expect: ")
    ]
    assert sorted(lines) == sorted(e.replace("# expect: ", "") for e in expected)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "a document must be a mapping"),
        ("apiVersion: tokenomy.dev/v1\nkind: CostPolicy\nmetadata: {name: x}\n", "unknown kind"),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n", "no CostPolicy found"),
    ],
)
def test_compile_bad_files_exit_2_without_traceback(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "input.yaml"
    path.write_text(content)
    result = tokenomy("compile", "-f", str(path))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_compile_missing_file(tmp_path: Path) -> None:
    result = tokenomy("compile", "-f", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read: No such file or directory" in result.stderr


def test_compile_reports_every_problem_not_just_the_first(tmp_path: Path) -> None:
    for name in ("unknown-route.yaml", "bad-duration.yaml"):
        text = (INVALID / name).read_text().replace("name: chat,", f"name: chat-{name[:3]},")
        text = text.replace("routes: [chat]", f"routes: [chat-{name[:3]}]")
        (tmp_path / name).write_text(text)
    result = tokenomy("compile", "-f", str(tmp_path))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 2


def test_usage_errors_exit_2() -> None:
    result = tokenomy("compile")
    assert result.returncode == 2
    assert "required" in result.stderr


def test_help_lists_subcommands() -> None:
    result = tokenomy("--help")
    assert result.returncode == 0
    assert "compile" in result.stdout
    assert "crds" in result.stdout


def test_crds_stdout_is_one_yaml_stream() -> None:
    result = tokenomy("crds", "--stdout")
    docs = list(yaml.safe_load_all(result.stdout))
    assert {d["metadata"]["name"] for d in docs} == {
        "costpolicies.tokenomy.dev",
        "modelroutes.tokenomy.dev",
    }
