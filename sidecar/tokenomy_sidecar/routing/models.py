"""Finding the models a config names: the built-in complexity model or trained files.

``builtin`` ships in the package for both: the complexity model trained on
the RouteLLM MMLU and GSM8K outcomes, the answer scorer on GSM8K answers
(both by ``scripts/train-builtin-models``, which leaves out the questions
``tokenomy demo`` asks). Any other name is a file in the models
directory: ``NAME`` or ``NAME.npz`` (in a cluster, a ConfigMap mounted there).
A name that cannot be loaded refuses the config, so the last good one stays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokenomy_sidecar.routing.complexity import ComplexityModel
from tokenomy_sidecar.routing.scorer import AnswerScorer

BUILTIN = "builtin"
BUILTIN_COMPLEXITY = Path(__file__).with_name("builtin_complexity.npz")
BUILTIN_SCORER = Path(__file__).with_name("builtin_scorer.npz")


@dataclass
class ModelFiles:
    """Loads models by name, once per file version."""

    directory: Path | None
    """Where trained models live; None: only ``builtin`` is available."""
    _complexity: dict[tuple[Path, float], ComplexityModel] = field(default_factory=dict)
    _scorers: dict[tuple[Path, float], AnswerScorer] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        """The file a model name refers to; ValueError when there is none."""
        if self.directory is None:
            raise ValueError(f"model {name!r}: no models directory is configured (--models-dir)")
        for candidate in (self.directory / name, self.directory / f"{name}.npz"):
            if candidate.is_file():
                return candidate
        raise ValueError(f"model {name!r}: no file {name} or {name}.npz in {self.directory}")

    def complexity(self, name: str) -> ComplexityModel:
        """The complexity model called ``name``."""
        path = BUILTIN_COMPLEXITY if name == BUILTIN else self.path(name)
        key = (path, path.stat().st_mtime)
        if key not in self._complexity:
            self._complexity[key] = ComplexityModel.load(path)
        return self._complexity[key]

    def scorer(self, name: str) -> AnswerScorer:
        """The answer scorer called ``name``."""
        path = BUILTIN_SCORER if name == BUILTIN else self.path(name)
        key = (path, path.stat().st_mtime)
        if key not in self._scorers:
            self._scorers[key] = AnswerScorer.load(path)
        return self._scorers[key]
