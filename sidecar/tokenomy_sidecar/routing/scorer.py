"""The cascade's learned scorer: how likely an answer is right, from the answer itself.

In the spirit of FrugalGPT's scorer, but small: logistic regression over a
few features any answer has — whether it states a final answer, whether the
arithmetic it shows is right, how long it is, whether it hedges. Trained on
a user's own (question, answer, correct?) records by ``tokenomy router
train --scorer``; ``tokenomy eval cascade`` fits it on a train split.
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tokenomy_sidecar.routing.confidence import FINAL, NUMBER
from tokenomy_sidecar.routing.guarantee import Calibration, packed, unpacked

Vector = npt.NDArray[np.float64]

# "12 * 3 = 36", "$<<8*5=40>>40": an expression shown with its result.
ARITHMETIC = re.compile(
    r"(\d[\d.,]*(?:\s*[-+*/x\u00d7]\s*\d[\d.,]*)+)\s*=\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)"
)
HEDGE = re.compile(
    r"\b(approximately|roughly|assum(e|ing)|unclear|not possible|cannot be determined|"
    r"not enough information)\b",
    re.IGNORECASE,
)
FEATURES = (
    "states a final answer",
    "final answer is a whole number",
    "shows a wrong calculation",
    "share of calculations wrong",
    "log answer words",
    "log question words",
    "last number is the final answer",
    "line breaks per word",
    "hedges",
)


def _evaluate(expression: str) -> float | None:
    """The value of ``a op b op c`` (numbers and + - * / only), left to right by precedence."""
    tokens = re.findall(r"\d[\d.,]*|[-+*/x\u00d7]", expression)
    try:
        numbers = [float(t.replace(",", "")) for t in tokens[::2]]
    except ValueError:
        return None
    ops = ["*" if t in "x\u00d7" else t for t in tokens[1::2]]
    # Multiplication and division first, then addition and subtraction.
    terms, signs = [numbers[0]], []
    for op, value in zip(ops, numbers[1:], strict=False):
        if op == "*":
            terms[-1] *= value
        elif op == "/":
            if value == 0:
                return None
            terms[-1] /= value
        else:
            signs.append(op)
            terms.append(value)
    total = terms[0]
    for sign, value in zip(signs, terms[1:], strict=False):
        total = total + value if sign == "+" else total - value
    return total


def arithmetic_errors(answer: str) -> tuple[int, int]:
    """(calculations checked, calculations wrong) in an answer."""
    checked = wrong = 0
    for match in ARITHMETIC.finditer(answer):
        value = _evaluate(match.group(1))
        if value is None:
            continue
        text = match.group(2).replace(",", "")
        stated = float(text)
        # A result may be rounded to the decimals it shows ("2 / 3 = 0.67").
        decimals = len(text.partition(".")[2])
        checked += 1
        if abs(value - stated) > 0.5 * 10.0**-decimals + 1e-9:
            wrong += 1
    return checked, wrong


def answer_features(question: str, answer: str) -> Vector:
    """The scorer's inputs for one answer (see FEATURES)."""
    final = FINAL.findall(answer)
    checked, wrong = arithmetic_errors(answer)
    numbers = NUMBER.findall(answer)
    words = max(1, len(answer.split()))
    return np.array(
        [
            1.0 if final else 0.0,
            1.0 if final and "." not in final[-1] else 0.0,
            1.0 if wrong else 0.0,
            wrong / (checked + 1),
            math.log1p(words),
            math.log1p(len(question.split())),
            1.0 if final and numbers and numbers[-1] == final[-1] else 0.0,
            answer.count("\n") / words,
            1.0 if HEDGE.search(answer) else 0.0,
        ]
    )


@dataclass
class AnswerScorer:
    """Logistic regression on standardised answer features."""

    weights: Vector
    """One weight per feature, then the bias."""
    mean: Vector
    scale: Vector
    cut: float = 0.5
    """Probability of a right answer below which the cascade escalates (calibrated)."""
    calibration: Calibration | None = None
    """Escalation scores (``1 - P(right)``, infinite for a format problem) and outcomes
    of answers kept out of training: the cut for any quality target is chosen on them
    (:meth:`cut_for`). None in files from before."""

    def cut_for(self, fraction: float, confidence: float) -> float:
        """The threshold on P(right) that keeps ``fraction`` of the reference tier's
        quality on new requests with probability ``confidence``; above 1 (accept
        nothing) when the calibration supports no saving."""
        if self.calibration is None:
            return self.cut
        escalate = self.calibration.scores
        return acceptance(escalate, self.calibration.cut(fraction, confidence))

    @classmethod
    def fit(
        cls, questions: Sequence[str], answers: Sequence[str], correct: Sequence[float]
    ) -> AnswerScorer:
        """Fit on (question, answer, 1 if right) records by gradient descent on log loss."""
        x = np.array([answer_features(q, a) for q, a in zip(questions, answers, strict=True)])
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
        return cls.fit_scaled(x, np.asarray(correct, dtype=np.float64), mean, scale)

    @classmethod
    def fit_scaled(
        cls, x: npt.NDArray[np.float64], y: Vector, mean: Vector, scale: Vector
    ) -> AnswerScorer:
        """Fit on feature rows with a given standardisation (shared by cross-fitted folds)."""
        z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
        w = np.zeros(z.shape[1])
        for _ in range(2000):
            p = 1.0 / (1.0 + np.exp(-(z @ w)))
            w -= 0.5 * (z.T @ (p - y) / len(y) + 1e-2 * np.append(w[:-1], 0.0))
        return cls(w, mean, scale)

    def score_features(self, features: Vector) -> float:
        """Probability that the answer with these features is right."""
        z = float(((features - self.mean) / self.scale) @ self.weights[:-1] + self.weights[-1])
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    def score(self, question: str, answer: str) -> float:
        """Probability that ``answer`` to ``question`` is right."""
        return self.score_features(answer_features(question, answer))

    @classmethod
    def average(cls, scorers: Sequence[AnswerScorer]) -> AnswerScorer:
        """One scorer whose logit is the mean of theirs (they must share a standardisation)."""
        first = scorers[0]
        return cls(np.mean([s.weights for s in scorers], axis=0), first.mean, first.scale)

    def save(self, path: Path) -> None:
        """Write the scorer as a .npz."""
        with path.open("wb") as f:
            np.savez(
                f, weights=self.weights, mean=self.mean, scale=self.scale, cut=[self.cut],
                calibration=packed(self.calibration),
            )  # fmt: skip

    @classmethod
    def load(cls, path: Path) -> AnswerScorer:
        """Read a scorer written by :meth:`save`; a file that is not one raises ValueError."""
        try:
            with np.load(path) as data:
                scorer = cls(data["weights"], data["mean"], data["scale"], float(data["cut"][0]))
                scorer.calibration = unpacked(data, "calibration")
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path} is not an answer scorer: {error}") from None
        if len(scorer.weights) != len(FEATURES) + 1:
            raise ValueError(f"{path} has {len(scorer.weights) - 1} features, not {len(FEATURES)}")
        return scorer


ACCEPT_NOTHING = 1.0 + 1e-9
"""A threshold on P(right) no answer reaches: every answer escalates."""


def acceptance(escalate: Vector, cut: float) -> float:
    """The threshold on P(right) (accept at or above it) for an escalation cut (escalate
    when ``1 - P(right) >= cut``; ``escalate`` is infinite for a format problem): between
    the answers escalated and the lowest kept one, so that the group at the cut
    escalates as the guarantee assumed."""
    if cut == -math.inf:
        return ACCEPT_NOTHING  # no saving supported
    kept = 1.0 - escalate[escalate < cut]
    if not len(kept):
        return ACCEPT_NOTHING
    if cut == math.inf:
        return 0.0  # every answer without a format problem is kept
    return float((1.0 - cut + kept.min()) / 2)
