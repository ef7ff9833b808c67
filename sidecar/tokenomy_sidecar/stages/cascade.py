"""Stage 5b: a cascade try — what to ask a cheaper tier, and which answer to judge.

The proxy sends the request to a cheaper tier as built here (never
streamed: the answer is judged whole before the client sees a byte), picks
the choice to judge and its confidence with the policy's method, and hands
the client an answer shaped like the one it asked for.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from tokenomy_api.compiled import CompiledCascade, CompiledTier
from tokenomy_sidecar.routing.confidence import agreement, content, logprob_confidence
from tokenomy_sidecar.routing.scorer import AnswerScorer

VERIFIER_MAX_TOKENS = 8
DEFAULT_THRESHOLD = 0.7
"""CompiledCascade a kept answer needs when neither the tier nor the policy sets one."""


def cascade_threshold(
    tier: CompiledTier, confidence: CompiledCascade, scorer: AnswerScorer | None
) -> float:
    """The tier's own threshold, else the policy's, else the scorer's cut or the default."""
    if tier.cascade_threshold is not None:
        return tier.cascade_threshold
    if confidence.method == "scorer" and scorer is not None:
        return scorer.cut
    return DEFAULT_THRESHOLD


def trial_body(body: Mapping[str, Any], confidence: CompiledCascade) -> dict[str, Any]:
    """The request as a cheaper tier gets it: whole (not streamed), with what judging needs."""
    trial = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    if confidence.method == "logprobs":
        trial["logprobs"] = True
    if confidence.method == "agreement":
        trial["n"] = confidence.samples
    return trial


def pick(
    completion: Mapping[str, Any],
    confidence: CompiledCascade,
    question: str,
    scorer: AnswerScorer | None,
) -> tuple[dict[str, Any], float | None]:
    """The choice to judge and, for methods that need no further call, its confidence.

    ``verifier`` and ``format`` return None: the verifier's call comes next,
    and ``format`` judges by the format checks alone.
    """
    choices = [c for c in completion.get("choices") or [] if isinstance(c, dict)]
    if not choices:
        raise ValueError("the answer has no choices")
    method = confidence.method
    if method == "logprobs":
        return choices[0], logprob_confidence(choices[0])
    if method == "agreement":
        index, share = agreement(choices)
        return choices[index], share
    if method == "scorer":
        if scorer is None:
            return choices[0], None
        return choices[0], scorer.score(question, content(choices[0]))
    return choices[0], None


def client_answer(
    completion: Mapping[str, Any], choice: Mapping[str, Any], request: Mapping[str, Any]
) -> dict[str, Any]:
    """The kept answer as the client asked for it: one choice, logprobs only if it asked."""
    kept = copy.deepcopy(dict(choice))
    kept["index"] = 0
    if not request.get("logprobs"):
        kept["logprobs"] = None
    return {**completion, "choices": [kept]}
