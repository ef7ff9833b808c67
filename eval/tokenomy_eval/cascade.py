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
from tokenomy_eval.routing import CONFIDENCE, MILLION, Row, calibration_split, outcomes
from tokenomy_sidecar.routing.confidence import agreement, final_answer, format_problem, judge
from tokenomy_sidecar.routing.decision import estimate_tokens
from tokenomy_sidecar.routing.guarantee import Calibration, guaranteed_cut
from tokenomy_sidecar.routing.scorer import AnswerScorer, acceptance, answer_features


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
    scorer.cut = acceptance(escalate, cut)
    scorer.calibration = Calibration(escalate, weak_q, strong_q)
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


def kept_quality(q: Query, weak: str, index: int) -> float | None:
    """The quality of the weak model's sample ``index`` (the majority answer kept).

    Its recorded score if the data has per-sample scores; else whether its final
    answer matches the reference's; else the weak model's score when that sample
    says what the first one (the scored answer) says; else unknown (None).
    """
    samples = q.samples[weak]
    scored = q.sample_scores.get(weak)
    if scored is not None and len(scored) == len(samples):
        return scored[index]
    if q.reference:
        return float(final_answer(samples[index]) == final_answer(q.reference))
    if final_answer(samples[index]) == final_answer(samples[0]):
        return q.scores[weak]
    return None


def agreement_of(q: Query, weak: str, n: int) -> tuple[float, float | None]:
    """(share of the first ``n`` samples giving the majority answer, that answer's quality),
    by the sidecar's own :func:`~tokenomy_sidecar.routing.confidence.agreement`."""
    index, share = agreement([_choice(a) for a in q.samples[weak][:n]])
    return share, kept_quality(q, weak, index)


def sampled_cost(q: Query, weak: str, n: int, prices: Mapping[str, Price], single: float) -> float:
    """What ``n`` samples in one call cost: the prompt once and ``n`` answers, priced by the
    table; without a price, ``n`` times the recorded single-answer cost (an upper bound)."""
    if weak not in prices:
        return single * n
    p = prices[weak]
    tokens_in = q.tokens.get(weak, (estimate_tokens(q.prompt), 0))[0]
    tokens_out = sum(estimate_tokens(a) for a in q.samples[weak][:n])
    return float((tokens_in * p.input + tokens_out * p.output) / MILLION)


def evaluate_agreement(
    train_set: Sequence[Query],
    test_set: Sequence[Query],
    weak: str,
    strong: str,
    prices: Mapping[str, Price],
    n: int,
    default_output: int = 5,
    fraction: float = 0.95,
    confidence: float = CONFIDENCE,
) -> CascadeResult:
    """The agreement cascade: keep the weak model's majority answer when enough of its
    ``n`` samples agree, the cut chosen on the whole train split (nothing is fit)."""
    usable = [q for q in (*train_set, *test_set) if len(q.samples.get(weak, ())) >= n]
    if not usable:
        raise ValueError(f"no query records {n} samples of {weak} (the JSONL's `samples`)")

    def signals(queries: Sequence[Query]) -> tuple[list[Query], np.ndarray, np.ndarray]:
        kept, shares, quality = [], [], []
        for q in queries:
            if len(q.samples.get(weak, ())) < n:
                continue
            share, value = agreement_of(q, weak, n)
            if value is not None:
                kept.append(q)
                shares.append(share)
                quality.append(value)
        return kept, np.array(shares), np.array(quality)

    train, train_share, train_q = signals(train_set)
    test, share, wq = signals(test_set)
    if len(train) < 2 or not test:
        raise ValueError("too few queries whose majority answer's quality is known")
    strong_train = np.array([q.scores[strong] for q in train])
    cut = guaranteed_cut(1.0 - train_share, train_q, strong_train, fraction, confidence, len(test))
    _, sq, single, sc = outcomes(test, weak, strong, prices, default_output)
    wc = np.array([sampled_cost(q, weak, n, prices, c) for q, c in zip(test, single, strict=True)])
    escalated = (1.0 - share) >= cut
    c = metrics.curve(1.0 - share, wq, sq, wc, wc + sc)
    row = Row(
        f"cascade (agreement of {n} samples)",
        float(1 - (wc.sum() + sc[escalated].sum()) / sc.sum()),
        float(escalated.mean()),
        float(np.where(escalated, sq, wq).mean() / sq.mean()),
        metrics.cpt(c, wq.mean(), sq.mean(), 0.5),
        metrics.apgr(c, wq.mean(), sq.mean()),
    )
    reasons = {"agreed": int((~escalated).sum()), "disagreed": int(escalated.sum())}
    return CascadeResult(row, reasons, c)
