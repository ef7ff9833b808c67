"""Print the requirements of the named extras of pyproject.toml, one a line.

Images install their dependencies from this list before copying the source,
so a code change rebuilds one small layer, not every wheel. Extras that name
``tokenomy[...]`` are expanded; markers are kept for pip to judge.

    python3 scripts/requirements.py sidecar local-embeddings
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

SELF = re.compile(r"^tokenomy\[(?P<extras>[^\]]+)\]$")


def requirements(project: dict[str, object], extras: list[str]) -> list[str]:
    """Core dependencies plus those of ``extras``, self-references expanded, in order."""
    optional = project.get("optional-dependencies") or {}
    assert isinstance(optional, dict)
    out: list[str] = []
    seen: set[str] = set()

    def add(extra: str) -> None:
        if extra in seen:
            return
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r}")
        seen.add(extra)
        for line in optional[extra]:
            match = SELF.match(line.strip())
            if match:
                for inner in match["extras"].split(","):
                    add(inner.strip())
            elif line not in out:
                out.append(line)

    core = project.get("dependencies") or []
    assert isinstance(core, list)
    out.extend(core)
    for extra in extras:
        add(extra)
    return out


def main() -> None:
    with (Path(__file__).resolve().parent.parent / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    print("\n".join(requirements(project, sys.argv[1:])))


if __name__ == "__main__":
    main()
