"""``tokenomy status``: every CostPolicy's spend, savings and quality as one table.

It reads what the operator wrote into the resources' status, through
``kubectl get costpolicies -o json`` (so it authenticates exactly as
kubectl does, and needs no Kubernetes client library), or from a file of
that output (``--from``). Rendering is pure: :func:`render`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenomy_api.readable import dollars

COLUMNS = (
    "NAMESPACE", "NAME", "READY", "SPEND", "BUDGET", "USED", "PROJECTED", "SAVED",
    "HIT RATE", "TIERS", "SIDECARS", "QUALITY",
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``status``' arguments."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-n", "--namespace", help="one namespace (default: kubectl's)")
    where.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    parser.add_argument(
        "--from", dest="source", type=Path, metavar="FILE",
        help="read `kubectl get costpolicies -o json` output from FILE instead of the cluster",
    )  # fmt: skip
    parser.add_argument("--kubeconfig", help="kubeconfig file (passed to kubectl)")
    parser.add_argument("--context", help="kubeconfig context (passed to kubectl)")


def run(args: argparse.Namespace) -> int:
    """Print the table; 1 with kubectl's own message when it cannot list the policies."""
    try:
        listing = _read(args)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"tokenomy status: {error}", file=sys.stderr)
        return 1
    print(render(listing.get("items") or []))
    return 0


def _read(args: argparse.Namespace) -> Mapping[str, Any]:
    if args.source is not None:
        data = json.loads(args.source.read_text())
    else:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise RuntimeError("kubectl is not on PATH (or use --from FILE)")
        command = [kubectl, "get", "costpolicies.tokenomy.dev", "-o", "json"]
        if args.all_namespaces:
            command.append("--all-namespaces")
        elif args.namespace:
            command += ["--namespace", args.namespace]
        for flag in ("kubeconfig", "context"):
            if getattr(args, flag):
                command += [f"--{flag}", getattr(args, flag)]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip() or f"kubectl exited with {done.returncode}")
        data = json.loads(done.stdout)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object with `items` (kubectl get -o json)")
    return data


def row(policy: Mapping[str, Any]) -> list[str]:
    """One policy's cells."""
    meta = policy.get("metadata") or {}
    status = policy.get("status") or {}
    display = status.get("display") or {}
    spend = status.get("spend") or {}
    conditions = status.get("conditions") or []
    ready: Mapping[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
    sidecars = status.get("sidecars") or {}
    shown_sidecars = f"{sidecars.get('acknowledged', 0)}/{sidecars.get('matched', 0)}"
    if sidecars.get("rejecting"):
        shown_sidecars += f" ({sidecars['rejecting']} rejecting)"
    tiers = " ".join(f"{t['tier']} {t['share']}" for t in status.get("tierShares") or [])
    quality = status.get("quality") or {}
    shown_quality = (
        f"{quality['agreement']} ({quality.get('lower', '?')}-{quality.get('upper', '?')})"
        if quality.get("agreement")
        else ""
    )
    projected = spend.get("projected")
    return [
        str(meta.get("namespace", "")),
        str(meta.get("name", "")),
        str(ready.get("status", "Unknown")),
        display.get("spend") or (dollars(spend["amount"]) if "amount" in spend else ""),
        display.get("budget", ""),
        str(spend.get("budgetUsed", "")),
        dollars(projected) if projected is not None else "",
        display.get("saved") or (dollars(status["savings"]) if "savings" in status else ""),
        str(status.get("cacheHitRate", "")),
        tiers,
        shown_sidecars,
        shown_quality,
    ]


def levers(policy: Mapping[str, Any]) -> str:
    """A policy's savings by lever, on one line; empty when none were reported."""
    usage = (policy.get("status") or {}).get("usage") or {}
    parts = [f"{s['lever']} {dollars(s['saved'])}" for s in usage.get("savedByLever") or []]
    return ", ".join(parts)


def render(policies: Sequence[Mapping[str, Any]]) -> str:
    """The table, then each policy's savings by lever (``-`` for an empty cell)."""
    if not policies:
        return "No CostPolicies found."
    rows = [row(p) for p in policies]
    cells = [list(COLUMNS), *([c or "-" for c in r] for r in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    saved = [(r[0], r[1], levers(p)) for r, p in zip(rows, policies, strict=True)]
    if any(text for *_, text in saved):
        lines += ["", "Savings by lever (this period):"]
        lines += [f"  {ns}/{name}: {text}" for ns, name, text in saved if text]
    return "\n".join(lines)
