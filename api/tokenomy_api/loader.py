"""Read resource files the way ``kubectl apply -f`` does."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from tokenomy_api.problems import Problem
from tokenomy_api.resources import ResourceSet, parse_documents

SUFFIXES = (".yaml", ".yml", ".json")


def _files(paths: Iterable[Path]) -> list[Path]:
    # Like kubectl without -R: a folder contributes its own files, not its subfolders'.
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES))
        else:
            out.append(path)
    return out


def load_resources(paths: Iterable[str | Path]) -> ResourceSet:
    """Parse every document in the given files and folders, collecting all problems."""
    docs: list[tuple[str, Any]] = []
    file_problems: list[Problem] = []
    for path in _files(Path(p) for p in paths):
        source = str(path)
        try:
            docs.extend((source, doc) for doc in yaml.safe_load_all(path.read_text()))
        except OSError as error:
            file_problems.append(Problem("", "", "", "", f"cannot read: {error.strerror}", source))
        except yaml.YAMLError as error:
            reason = " ".join(f"not valid YAML: {error}".split())
            file_problems.append(Problem("", "", "", "", reason, source))
    resources = parse_documents(docs)
    resources.problems[:0] = file_problems
    return resources
