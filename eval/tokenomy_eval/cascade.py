"""``tokenomy eval cascade``: judge the weak model's recorded answer, escalate when unsure.

The judging is the sidecar's: :func:`~tokenomy_sidecar.routing.confidence.format_problem`
and :func:`~tokenomy_sidecar.routing.confidence.judge` with the learned
:class:`~tokenomy_sidecar.routing.scorer.AnswerScorer` (the only confidence
signal a recorded answer carries: no logprobs, one sample). The scorer is
fit on half of the training split and its cut chosen on the other half with
a finite-sample guarantee (:mod:`tokenomy_eval.guarantee`). A cascaded query
costs the weak call always and the strong call too when it escalates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tokenomy_api.compiled import Price
from tokenomy_eval import metrics
from tokenomy_eval.dataset import Query
from tokenomy_eval.guarantee import guaranteed_cut
from tokenomy_eval.routing import CONFIDENCE, Row, calibration_split, outcomes
from tokenomy_sidecar.routing.confidence import format_problem, judge
from tokenomy_sidecar.routing.scorer import AnswerScorer, answer_features


def _choice(answer: str) -> dict[str, object]:
    return {"message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}


def problems(queries: Sequence[Query], weak: str) -> list[str | None]:
    """The format check on each recorded weak answer."""
    return [format_problem(_choice(q.answers[weak]), {}) for q in queries]


def fit_scorer(
    train_set: Sequence[Query],
    weak: str,
    strong: str,
    fraction: float,
    confidence: float = CONFIDENCE,
    batch: int | None = None,
) -> AnswerScorer:
    """The answer scorer, fit on part of ``train_set``, with the cut that keeps ``fraction``
    of the strong quality with probability ``confidence`` (chosen on the rest of it)."""
    fit, calibrate = calibration_split(train_set)
    x = np.array([answer_features(q.prompt, q.answers[weak]) for q in fit])
    y = np.array([q.scores[weak] for q in fit])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    scorer = AnswerScorer.fit_scaled(x, y, mean, scale)
    right = np.array([scorer.score(q.prompt, q.answers[weak]) for q in calibrate])
    flagged = np.array([p is not None for p in problems(calibrate, weak)])
    # Escalation score: 1 - P(right); a format problem always escalates.
    escalate = np.where(flagged, np.inf, 1.0 - right)
    weak_q = np.array([q.scores[weak] for q in calibrate])
    strong_q = np.array([q.scores[strong] for q in calibrate])
    cut = guaranteed_cut(escalate, weak_q, strong_q, fraction, confidence, batch)
    scorer.cut = acceptance(right, escalate, cut)
    return scorer


def acceptance(right: np.ndarray, escalate: np.ndarray, cut: float) -> float:
    """The scorer's threshold (accept when P(right) >= it) for an escalation cut (escalate
    when ``1 - P(right) >= cut``): between the answers escalated and the lowest kept one, so
    that the group at the cut escalates as the guarantee assumed."""
    if cut == -np.inf:
        return 1.0 + 1e-9  # no saving supported: accept nothing
    kept = right[escalate < cut]
    if not len(kept):
        return 1.0 + 1e-9
    if cut == np.inf:
        return 0.0  # every answer without a format problem is kept
    return float((1.0 - cut + kept.min()) / 2)


@dataclass(frozen=True)
class CascadeResult:
    """The cascade's row, and why it escalated."""

    row: Row
    reasons: dict[str, int]
    curve: metrics.Curve
    """Quality and cost as more answers escalate, in order of doubt."""


def evaluate_cascade(
    train_set: Sequence[Query],
    test_set: Sequence[Query],
    weak: str,
    strong: str,
    prices: Mapping[str, Price],
    default_output: int = 5,
    fraction: float = 0.95,
    confidence: float = CONFIDENCE,
) -> CascadeResult:
    """The cascade on the test split, with the scorer and its cut from the train split."""
    missing = [q for q in (*train_set, *test_set) if weak not in q.answers]
    if missing:
        raise ValueError(
            f"{len(missing)} queries have no recorded answer of {weak}: a cascade judges the "
            "weak model's answer, so the data needs it (RouteLLM's GSM8K CSV has it, MMLU not)"
        )
    scorer = fit_scorer(train_set, weak, strong, fraction, confidence, len(test_set))
    wq, sq, wc, sc = outcomes(test_set, weak, strong, prices, default_output)
    right = np.array([scorer.score(q.prompt, q.answers[weak]) for q in test_set])
    verdicts = [
        judge("scorer", p, scorer.cut, problem)
        for p, problem in zip(right, problems(test_set, weak), strict=True)
    ]
    escalated = np.array([not v.accept for v in verdicts])
    reasons: dict[str, int] = {}
    for v in verdicts:
        reasons[v.reason] = reasons.get(v.reason, 0) + 1
    flagged = np.array([v.reason not in ("confident", "low_confidence") for v in verdicts])
    c = metrics.curve(np.where(flagged, np.inf, 1.0 - right), wq, sq, wc, wc + sc)
    row = Row(
        "cascade (weak answer judged)",
        float(1 - (wc.sum() + sc[escalated].sum()) / sc.sum()),
        float(escalated.mean()),
        float(np.where(escalated, sq, wq).mean() / sq.mean()),
        metrics.cpt(c, wq.mean(), sq.mean(), 0.5),
        metrics.apgr(c, wq.mean(), sq.mean()),
    )
    return CascadeResult(row, reasons, c)
