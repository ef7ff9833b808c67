"""``tokenomy crds``: write the CRDs generated from the API types, or check for drift."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokenomy_api.crd import REFERENCE_FILE, render_crds, render_kustomization
from tokenomy_api.crd_docs import render_reference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``crds``' arguments."""
    parser.add_argument("--dir", type=Path, default=Path("crds"), help="folder (default: crds)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true", help="exit 1 if the folder differs from the types"
    )
    mode.add_argument(
        "--stdout", action="store_true", help="print all CRDs as one YAML stream instead"
    )


def run(args: argparse.Namespace) -> int:
    """Write, print or check the CRD files."""
    rendered = render_crds()
    if args.stdout:
        sys.stdout.write("---\n".join(rendered.values()))
        return 0
    rendered[REFERENCE_FILE] = render_reference()
    rendered["kustomization.yaml"] = render_kustomization()
    if args.check:
        drifted = [
            name
            for name, text in rendered.items()
            if not (args.dir / name).is_file() or (args.dir / name).read_text() != text
        ]
        for name in drifted:
            print(f"{args.dir / name}: out of date; run `tokenomy crds`", file=sys.stderr)
        return 1 if drifted else 0
    args.dir.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (args.dir / name).write_text(text)
        print(args.dir / name)
    return 0
