"""The semantic cache's wrong-hit budget: which near matches to serve, learnt from outcomes.

A fixed similarity threshold is what it is: on Banking77 MiniLM serves 15 %
of lookups at 2 % wrong hits, because near-identical questions can carry
different intents. Two signals per lookup, each a rule "serve when the signal
reaches its cut":

- **similarity** of the nearest stored question;
- **agreement** of its neighbourhood: over the :data:`NEIGHBOURS` nearest
  stored questions, the similarities of those whose answer is the nearest
  one's, minus those of the others. Many close questions with one answer and
  none with another is what a cosine threshold cannot see. Answers are
  compared exactly (normalised text and tool calls): free-text answers that
  say the same in other words count as different, which lowers the
  agreement, never raises it.

The two cuts are chosen together from the outcomes seen: the pair that serves
the most while the wrong share among what it serves stays under the budget
with 99 % confidence (a one-sided Wilson bound; 99 % because the scan keeps
the best of many candidate cuts, which is optimistic at 95 %: the budget held
in 92 % of synthetic splits at 95 %, in all at 99 %). Until outcomes
support a cut, nothing is served.

Outcomes are lookups whose answer is known: candidates the rules did not
serve (they went to the model anyway; its answer is compared with the
candidate's), a share of servable ones sent to the model on purpose
(exploration, weighted by the inverse of that share so the seen shares stay
unbiased, counted by Kish's effective sample size), and answers users report
as wrong.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson

from tokenomy_api.bounds import Z_99

NEIGHBOURS = 16
"""Nearest entries whose answers vote in the agreement."""
KEPT = 4_096
"""Outcomes kept per route (the newest): enough for a 1 % bound, and they follow drift."""

Verdict = Literal["serve", "explore", "miss"]


def wilson_upper_each(
    p: npt.NDArray[np.float64], n: npt.NDArray[np.float64], z: float
) -> npt.NDArray[np.float64]:
    """:func:`~tokenomy_api.bounds.wilson_upper` of shares ``p`` in ``n`` outcomes, element-wise
    (the scan needs one per candidate cut); shares of weighted outcomes count with Kish's
    effective sample size ``n``, so an explored outcome standing for twenty is not twenty
    observations."""
    z2 = z * z
    spread = z * np.sqrt(np.maximum(p * (1 - p), 0.0) / n + z2 / (4 * n * n))
    upper: npt.NDArray[np.float64] = np.minimum(1.0, (p + z2 / (2 * n) + spread) / (1 + z2 / n))
    return upper


@dataclass(frozen=True)
class Outcome:
    """A lookup whose answer is known."""

    similarity: float
    agreement: float
    correct: bool
    weight: float = 1.0
    """How many lookups it stands for (the inverse of the rate it was sampled at)."""


@dataclass(frozen=True)
class Candidate:
    """A near match sent to the model; its fresh answer makes it an :class:`Outcome`."""

    similarity: float
    agreement: float
    weight: float
    entry: bytes
    """The stored entry that would have been served."""
    explored: bool = False
    """Servable, sent to the model to measure."""

    def outcome(self, correct: bool) -> Outcome:
        """This lookup, its answer known."""
        return Outcome(self.similarity, self.agreement, correct, self.weight)


@dataclass(frozen=True)
class Cuts:
    """What the rules serve now, and how sure that is."""

    similarity: float
    """Serve at or above this similarity (``inf``: not yet)."""
    agreement: float
    """Serve at or above this agreement (``inf``: not yet)."""
    bound: float
    """Upper bound (99 %) of the wrong share among the outcomes both rules serve; 1 when
    they serve none of them."""
    outcomes: int

    def serves(self, similarity: float, agreement: float) -> bool:
        """Whether either rule serves a lookup with these signals."""
        return similarity >= self.similarity or agreement >= self.agreement


NO_CUTS = Cuts(math.inf, math.inf, 1.0, 0)


SIMILARITY_CUTS = 24
"""Similarity cuts tried (quantiles of the outcomes seen), each with its best agreement cut."""


def cuts(outcomes: Sequence[Outcome], budget: float) -> Cuts:
    """The pair of cuts that serves the most outcomes within the budget (99 %)."""
    if not outcomes:
        return NO_CUTS
    similarity = np.array([o.similarity for o in outcomes])
    agreement = np.array([o.agreement for o in outcomes])
    correct = np.array([o.correct for o in outcomes])
    weight = np.array([o.weight for o in outcomes])
    tried = np.unique(np.quantile(similarity, np.linspace(0, 1, SIMILARITY_CUTS)))
    best = NO_CUTS
    most = 0.0
    for by_similarity in [math.inf, *tried]:
        plain = similarity >= by_similarity
        rest = ~plain
        served, by_agreement, bound = _extend(
            weight[plain], correct[plain], agreement[rest], correct[rest], weight[rest], budget
        )
        if served > most:
            most = served
            best = Cuts(float(by_similarity), by_agreement, bound, len(outcomes))
    return best if most else replace(NO_CUTS, outcomes=len(outcomes))


def _extend(
    base_w: npt.NDArray[np.float64],
    base_c: npt.NDArray[np.bool_],
    score: npt.NDArray[np.float64],
    correct: npt.NDArray[np.bool_],
    weight: npt.NDArray[np.float64],
    budget: float,
) -> tuple[float, float, float]:
    """Outcomes served by ``base`` plus those at or above the lowest agreement cut that keeps
    the whole within the budget: (weight served, that cut, the bound); (0, inf, 1) if none."""
    order = np.argsort(-score, kind="stable")
    s, c, w = score[order], correct[order], weight[order]
    total = np.concatenate([[0.0], np.cumsum(w)]) + base_w.sum()
    wrong = np.concatenate([[0.0], np.cumsum(w * ~c)]) + (base_w * ~base_c).sum()
    squares = np.concatenate([[0.0], np.cumsum(w * w)]) + (base_w * base_w).sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        effective = np.where(total > 0, total * total / squares, 0.0)
        share = np.where(total > 0, wrong / total, 0.0)
        bound = np.where(effective > 0, wilson_upper_each(share, effective, Z_99), 1.0)
    # prefix n serves the n highest scores; a cut serves every tie or none
    whole = np.concatenate([[True], s[1:] != s[:-1], [True]])[: len(s) + 1]
    passing = np.flatnonzero(whole & (bound <= budget) & (total > 0))
    if not len(passing):
        return 0.0, math.inf, 1.0
    n = int(passing[-1])
    return float(total[n]), float(s[n - 1]) if n else math.inf, float(bound[n])


def decide(cut: Cuts, similarity: float, agreement: float, explore: float, draw: float) -> Verdict:
    """Serve a candidate the cuts allow, except a share ``explore`` of them sent on to learn.

    ``draw`` is uniform in [0, 1). Candidates the cuts do not serve are
    ``miss``: they go to the model and are outcomes too.
    """
    if not cut.serves(similarity, agreement):
        return "miss"
    return "explore" if draw < explore else "serve"


_SPACE = re.compile(r"\s+")


@functools.lru_cache(maxsize=1_024)
def answer_of(entry: bytes) -> bytes:
    """A stored entry's answer, as compared (:func:`answer_key`).

    Remembered for the newest 1,024 entries: every lookup under a budget reads
    16 neighbours, mostly the same popular ones, and parsing each answer
    again cost most of the neighbourhood's time (bytes cache their hash, so
    a hit is a dictionary lookup). The cache holds at most that many entries'
    bytes beyond the memory budget (about 1-2 MiB with 1 KB answers).
    """
    body = entry.split(b"\n", 2)[-1]
    try:
        completion = orjson.loads(body)
    except orjson.JSONDecodeError:
        return hashlib.sha256(body).digest()
    return answer_key(completion if isinstance(completion, dict) else {})


def answer_text(completion: dict[str, Any]) -> str:
    """The first choice's message text."""
    choices = completion.get("choices") or [{}]
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    return str((message or {}).get("content") or "") if isinstance(message, dict) else ""


def answer_key(completion: dict[str, Any]) -> bytes:
    """A completion's answer, normalised: its text (spacing and case aside) and tool calls."""
    choices = completion.get("choices") or [{}]
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    calls = (message or {}).get("tool_calls") if isinstance(message, dict) else None
    named = [
        [str((c.get("function") or {}).get(k, "")) for k in ("name", "arguments")]
        for c in calls or []
        if isinstance(c, dict)
    ]
    text = _SPACE.sub(" ", answer_text(completion)).strip().casefold()
    return hashlib.sha256(orjson.dumps([text, named])).digest()


def agreement(
    neighbours: Sequence[tuple[float, bytes]], answer: Callable[[bytes], Hashable] = answer_of
) -> float:
    """The neighbourhood's vote for the nearest entry's answer.

    ``neighbours``: (similarity, entry), most similar first. The sum of the
    similarities of those with the nearest one's answer, minus the others'.
    """
    if not neighbours:
        return 0.0
    first = answer(neighbours[0][1])
    return sum(s if answer(e) == first else -s for s, e in neighbours)


class WrongHitBudget:
    """Outcomes per route (bounded), and the cuts they support.

    Choosing the cuts costs about 15 ms at 1,500 outcomes, so they are chosen
    again only once the outcomes have grown by 1/32 (at least 16) since, or at
    once after a wrong one the cuts would have served: news of a wrong hit
    must not wait.
    """

    def __init__(self) -> None:
        self._outcomes: dict[Hashable, deque[Outcome]] = {}
        self._cuts: dict[Hashable, tuple[float, Cuts]] = {}
        self._fresh: dict[Hashable, int] = {}
        """Outcomes recorded per route since its cuts were chosen."""

    def record(self, key: Hashable, outcome: Outcome) -> None:
        """Add an outcome; the cuts follow on a later read."""
        seen = self._outcomes.setdefault(key, deque(maxlen=KEPT))
        seen.append(outcome)
        fresh = self._fresh[key] = self._fresh.get(key, 0) + 1
        known = self._cuts.get(key)
        serving = known is not None and known[1].serves(outcome.similarity, outcome.agreement)
        # A wrong one where the cuts serve must tighten them now; elsewhere it waits its turn
        # (re-choosing after every wrong near match would cost ~10 ms each at 4,096).
        if (serving and not outcome.correct) or fresh >= max(16, len(seen) // 32):
            self._cuts.pop(key, None)

    def cuts(self, key: Hashable, budget: float) -> Cuts:
        """The cuts for this route at this budget."""
        known = self._cuts.get(key)
        if known is not None and known[0] == budget:
            return known[1]
        current = cuts(list(self._outcomes.get(key, ())), budget)
        self._cuts[key] = (budget, current)
        self._fresh[key] = 0
        return current
