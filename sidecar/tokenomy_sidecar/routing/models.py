"""Finding the models a config names: the built-in complexity model or trained files.

``builtin`` ships in the package for both: the complexity model trained on
the RouteLLM MMLU and GSM8K outcomes, the answer scorer on GSM8K answers
(both by ``scripts/train-builtin-models``, which leaves out the questions
``tokenomy demo`` asks). Any other name is a file in the models
directory: ``NAME`` or ``NAME.npz`` (in a cluster, a ConfigMap mounted there).
A name that cannot be loaded refuses the config, so the last good one stays.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from tokenomy_api.compiled import SidecarConfig
from tokenomy_sidecar.routing.complexity import ComplexityModel
from tokenomy_sidecar.routing.scorer import ACCEPT_NOTHING, AnswerScorer

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


@dataclass(frozen=True)
class Targeted:
    """The models a config uses, with cuts chosen for its quality target."""

    complexity: ComplexityModel | None
    scorer: AnswerScorer | None
    notices: tuple[str, ...] = ()
    """Levers that save nothing at that target, in words (for the operator's status)."""


def targeted(
    config: SidecarConfig, complexity: ComplexityModel | None, scorer: AnswerScorer | None
) -> Targeted:
    """Copies of the models whose cuts keep ``config.quality`` (pure: the files' models are
    shared by every config); a notice for each whose calibration supports no saving
    there, unless every tier it would decide for has a threshold set by hand."""
    quality = config.quality
    goal = (
        f"{quality.target * 100:g} % of the reference tier's quality "
        f"with {quality.confidence * 100:g} % confidence"
    )
    notices: list[str] = []
    if complexity is not None:
        cut = complexity.cut_for(quality.target, quality.confidence)
        complexity = dataclasses.replace(complexity, cut=cut)
        by_model = any(
            t.routing_threshold is None
            for r in config.routes
            for t in r.tiers[: [x.name for x in r.tiers].index(r.reference_tier)]
        )
        if cut == -math.inf and by_model:
            notices.append(
                f"routing.complexity: model {config.routing.complexity_model} supports no saving "
                f"at {goal}: every request goes to the reference tier"
            )
    if scorer is not None:
        cut = scorer.cut_for(quality.target, quality.confidence)
        scorer = dataclasses.replace(scorer, cut=cut)
        by_model = any(t.cascade_threshold is None for r in config.routes for t in r.tiers)
        if cut >= ACCEPT_NOTHING and by_model and config.cascade is not None:
            notices.append(
                f"cascade.confidence: scorer {config.cascade.scorer} supports no saving at "
                f"{goal}: every answer escalates"
            )
    return Targeted(complexity, scorer, tuple(notices))
