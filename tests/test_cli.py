"""The ``tokenomy`` command as a user runs it: exit codes, output, no tracebacks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
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


def test_compile_warns_of_fields_without_effect_and_still_prints_the_config(
    tmp_path: Path,
) -> None:
    text = (REPO / "examples" / "costpolicy-support-agent.yaml").read_text()
    (tmp_path / "policy.yaml").write_text(
        text.replace("    enabled: true\n    mcpServers:", "    enabled: false\n    mcpServers:", 1)
    )
    for name in ("modelroute-support-chat.yaml", "secrets.yaml"):
        (tmp_path / name).write_text((REPO / "examples" / name).read_text())
    result = tokenomy("compile", "-f", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "warning: " in result.stderr
    assert "spec.tools.enabled: is false: the tool proxy is off" in result.stderr
    assert json.loads(result.stdout)


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


# Started as the sidecar image starts it; once /readyz answers, the process
# writes the names of every module it has loaded and exits.
MODULES_AT_READY = """
import json, os, sys, threading, time, urllib.request
metrics, api, out = sys.argv[1:4]
def report():
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=1)
            break
        except Exception:
            time.sleep(0.05)
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)
    os._exit(0)
threading.Thread(target=report, daemon=True).start()
from tokenomy_cli.main import main
main(["sidecar", "--config", "examples/local/", "--listen", f"127.0.0.1:{api}",
      "--metrics", f"127.0.0.1:{metrics}"])
"""

CONTROL_PLANE_MODULES = (
    "kopf",
    "kubernetes",
    "tokenomy_operator",
    "tokenomy_eval",
    "tokenomy_demo",
)


def test_the_sidecar_process_loads_no_control_plane_modules(tmp_path: Path) -> None:
    """The sidecar image has no kopf or kubernetes client: starting it must not need them."""
    from support import free_port  # noqa: PLC0415

    out = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", MODULES_AT_READY, str(free_port()), str(free_port()), str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(out.read_text())
    assert "tokenomy_sidecar.app" in loaded  # it did start
    assert [m for m in loaded if m.split(".")[0] in CONTROL_PLANE_MODULES] == []


def test_compile_imports_neither_data_plane_nor_control_plane() -> None:
    code = (
        "import json, sys; from tokenomy_cli.main import main; main(['compile', '-f', 'examples/'])"
        "; print(json.dumps(sorted(sys.modules)), file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded = {m.split(".")[0] for m in json.loads(result.stderr.splitlines()[-1])}
    assert "tokenomy_api" in loaded
    assert not loaded & {"tokenomy_sidecar", "tokenomy_operator", "kopf", "aiohttp", "numpy"}
