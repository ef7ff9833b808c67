"""``tokenomy compile -f PATH``: the compiler on files, as the operator would run it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from tokenomy_api.compiler import compile_configs
from tokenomy_api.loader import load_resources
from tokenomy_api.meta import dump

EXIT_INVALID = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``compile``'s arguments."""
    parser.add_argument(
        "-f",
        "--filename",
        dest="paths",
        action="append",
        required=True,
        metavar="PATH",
        help="a YAML or JSON file, or a folder of them (not recursive), as for kubectl apply",
    )


def run(args: argparse.Namespace) -> int:
    """Print the compiled configs by policy (and, as warnings, fields without effect), or
    every problem and exit 2."""
    resources = load_resources(args.paths)
    compilation = compile_configs(resources.policies, resources.routes)
    problems = list(resources.problems)
    problems += [
        dataclasses.replace(p, source=resources.source_of(p.kind, p.namespace, p.name))
        for p in compilation.problems
    ]
    if not problems and not resources.policies:
        problems_text = "no CostPolicy found; nothing to compile"
        print(f"tokenomy compile: {problems_text}", file=sys.stderr)
        return EXIT_INVALID
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    for notice in compilation.notices:
        source = resources.source_of(notice.kind, notice.namespace, notice.name)
        print(f"warning: {dataclasses.replace(notice, source=source)}", file=sys.stderr)
    out = {key: dump(config) for key, config in compilation.configs.items()}
    json.dump(out, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0
