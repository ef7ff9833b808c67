"""``tokenomy``: dispatch to subcommands.

Each subcommand module registers its own arguments and is imported only when
chosen, so ``tokenomy compile`` never loads the operator's or the sidecar's
dependencies, and the operator and sidecar never import each other.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol


class Subcommand(Protocol):
    """What a subcommand module provides."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# name -> module; modules are imported lazily.
SUBCOMMANDS: dict[str, str] = {
    "compile": "tokenomy_cli.compile_cmd",
    "crds": "tokenomy_cli.crds_cmd",
    "demo": "tokenomy_demo.cli",
    "eval": "tokenomy_eval.cli",
    "operator": "tokenomy_operator.cli",
    "router": "tokenomy_eval.router_cli",
    "sidecar": "tokenomy_sidecar.cli",
    "simulate": "tokenomy_demo.simulate",
    "standin": "tokenomy_standin.cli",
    "status": "tokenomy_cli.status_cmd",
}

# One-line help without importing every module just to print --help.
_HELP: dict[str, str] = {
    "compile": "compile CostPolicy and ModelRoute YAML into sidecar configs (JSON)",
    "crds": "write or check the CRD manifests generated from the API types",
    "demo": "see the savings end to end: stand-in models, a sidecar, a real workload, a report",
    "eval": "score routing, cascading and the semantic cache on data with known outcomes",
    "operator": "run the control plane: watch the CRDs, serve xDS, inject sidecars, write status",
    "router": "train the complexity model or the cascade's answer scorer on your outcomes",
    "sidecar": "run the OpenAI-compatible sidecar proxy from CostPolicy/ModelRoute YAML",
    "simulate": "the demo's report for your own policy and request log, projected to a month",
    "standin": "run a stand-in OpenAI-compatible model server (for trying things out)",
    "status": "every CostPolicy's spend, budget, savings, hit rate, tiers, sidecars, quality",
}


def _version() -> str:
    try:
        return version("tokenomy")
    except PackageNotFoundError:
        return "unknown"


def chosen(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is one), if any."""
    return next((word for word in argv if word in SUBCOMMANDS), None)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; with ``only``, just that subcommand's module is imported.

    Importing a subcommand's module loads its dependencies: ``tokenomy
    sidecar`` must not pay for kopf and the kubernetes client (nor have them
    installed), so ``main`` imports only the one it runs.
    """
    parser = argparse.ArgumentParser(
        prog="tokenomy",
        description="Run AI agents on Kubernetes cheaply without making them worse.",
    )
    parser.add_argument("--version", action="version", version=f"tokenomy {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=_HELP[name], description=_HELP[name])
        if only is None or name == only:
            module: Subcommand = importlib.import_module(module_name)
            module.add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(chosen(words)).parse_args(words)
    module: Subcommand = importlib.import_module(SUBCOMMANDS[args.command])
    try:
        return module.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
