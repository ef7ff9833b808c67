"""Shared paths for the tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
INVALID = EXAMPLES / "invalid"
CRDS = REPO / "crds"
