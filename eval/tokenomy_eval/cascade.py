"""``tokenomy eval cascade``: judge the weak model's recorded answer, escalate when unsure.

The judging is the sidecar's: :func:`~tokenomy_sidecar.routing.confidence.format_problem`
and :func:`~tokenomy_sidecar.routing.confidence.judge` with the learned
:class:`~tokenomy_sidecar.routing.scorer.AnswerScorer` (the only confidence
signal a recorded answer carries: no logprobs, one sample). The scorer is
the average of 5 fold scorers and its cut is chosen on their out-of-fold
scores on the training data. A cascaded query costs the weak call always and
the strong call too when it escalates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tokenomy_api.compiled import Price
from tokenomy_eval import metrics
from tokenomy_eval.dataset import Query
from tokenomy_eval.routing import FOLDS, Row, outcomes, stable_threshold
from tokenomy_sidecar.routing.confidence import format_problem, judge
from tokenomy_sidecar.routing.scorer import AnswerScorer, answer_features


def _choice(answer: str) -> dict[str, object]:
    return {"message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}


def problems(queries: Sequence[Query], weak: str) -> list[str | None]:
    """The format check on each recorded weak answer."""
    return [format_problem(_choice(q.answers[weak]), {}) for q in queries]


def fit_scorer(train_set: Sequence[Query], weak: str, strong: str, fraction: float) -> AnswerScorer:
    """The answer scorer with its cut calibrated for ``fraction`` of the strong quality."""
    x = np.array([answer_features(q.prompt, q.answers[weak]) for q in train_set])
    y = np.array([q.scores[weak] for q in train_set])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    right = np.empty(len(train_set))
    folds = []
    for fold in range(FOLDS):
        held = np.arange(len(train_set)) % FOLDS == fold
        fitted = AnswerScorer.fit_scaled(x[~held], y[~held], mean, scale)
        folds.append(fitted)
        right[held] = [fitted.score_features(row) for row in x[held]]
    scorer = AnswerScorer.average(folds)
    flagged = np.array([p is not None for p in problems(train_set, weak)])
    # Escalation score: 1 - P(right); a format problem always escalates.
    escalate = np.where(flagged, np.inf, 1.0 - right)
    strong_q = np.array([q.scores[strong] for q in train_set])
    cut = stable_threshold(escalate, y, strong_q, fraction)
    scorer.cut = 1.0 - cut if np.isfinite(cut) else 0.0
    return scorer


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
) -> CascadeResult:
    """The cascade on the test split, with the scorer and its cut from the train split."""
    missing = [q for q in (*train_set, *test_set) if weak not in q.answers]
    if missing:
        raise ValueError(
            f"{len(missing)} queries have no recorded answer of {weak}: a cascade judges the "
            "weak model's answer, so the data needs it (RouteLLM's GSM8K CSV has it, MMLU not)"
        )
    scorer = fit_scorer(train_set, weak, strong, fraction)
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
