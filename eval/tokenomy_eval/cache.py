"""``tokenomy eval cache``: what the semantic cache costs in answer quality.

Lookups go through the sidecar's own index (:class:`SemanticIndex`, HNSW)
with the sidecar's local embedder (all-MiniLM-L6-v2 on ONNX Runtime, int8 unless
``--precision fp32``). Two kinds of
data:

- ``--labelled FILE``: queries with an intent label (CSV with ``text`` and
  ``category``, as Banking77). The file's queries fill the cache; the
  ``--lookups`` file's queries look up their nearest entry (without it, a
  fixed-seed half of FILE does). A hit is correct when the intents match.
- ``--pairs FILE``: labelled pairs (JSON list, optionally gzipped, of
  ``{text_a, text_b, label}``, as GPTCache's QQP set). One side is cached,
  the other looks it up; a hit is correct when the pair is a duplicate.

For each threshold: hit rate and the share of hits that serve a wrong
answer, and the lowest threshold that keeps wrong hits under the target.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tokenomy_api.clock import SystemClock
from tokenomy_eval.metrics import Array
from tokenomy_sidecar.local_embedder import MiniLM
from tokenomy_sidecar.memory_budget import MemoryBudget
from tokenomy_sidecar.semantic_budget import NEIGHBOURS, Outcome, agreement, cuts
from tokenomy_sidecar.semantic_index import SemanticIndex

THRESHOLDS = (0.70, 0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.98)

Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Point:
    """The cache at one threshold."""

    threshold: float
    hit_rate: float
    wrong_share: float
    """Share of hits that served a wrong answer."""


def embed_all(model: MiniLM, texts: list[str], batch: int = 64) -> npt.NDArray[np.float32]:
    """Embed in batches of similar length, so padding stays small."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.dimensions), dtype=np.float32)
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        out[chunk] = model.embed([texts[i] for i in chunk])
    return out


def point(similarity: Array, correct: Bools, threshold: float) -> Point:
    """Hit rate and wrong-hit share when answers at or above ``threshold`` are served."""
    hit = similarity >= threshold
    hits = int(hit.sum())
    wrong = int((hit & ~correct).sum())
    return Point(threshold, hits / len(similarity), wrong / hits if hits else 0.0)


def sweep(similarity: Array, correct: Bools) -> list[Point]:
    """The cache at each of THRESHOLDS."""
    return [point(similarity, correct, t) for t in THRESHOLDS]


def lowest_safe(similarity: Array, correct: Bools, target: float) -> Point | None:
    """The lowest threshold (0.005 steps) whose wrong-hit share is at most ``target``."""
    for t in np.arange(0.50, 1.0001, 0.005):
        p = point(similarity, correct, round(float(t), 3))
        if p.hit_rate and p.wrong_share <= target:
            return p
    return None


@dataclass(frozen=True)
class Lookups:
    """Each lookup's signals and whether its nearest entry had the right answer."""

    similarity: Array
    agreement: Array
    """Similarity over the nearest entry with another answer (0 where unknown: pairs)."""
    correct: Bools


@dataclass(frozen=True)
class BudgetRun:
    """A wrong-hit budget over random calibration/test splits of the lookups."""

    budget: float
    splits: int
    held: float
    """Share of splits whose test wrong-hit share stayed within the budget."""
    served: float
    """Median share of test lookups served from the cache."""
    wrong: float
    """Median test wrong-hit share."""
    by_similarity: float
    """Median share of test lookups the similarity rule alone serves."""


def budget_splits(lookups: Lookups, budget: float, splits: int, seed: int) -> BudgetRun:
    """The sidecar's cuts (:mod:`tokenomy_sidecar.semantic_budget`) from the outcomes of a
    random half of the lookups, serving the other half."""
    rng = np.random.default_rng(seed)
    held, served, wrong, alone = 0, [], [], []
    n = len(lookups.similarity)
    for _ in range(splits):
        order = rng.permutation(n)
        fit, test = order[: n // 2], order[n // 2 :]
        s, m, c = lookups.similarity, lookups.agreement, lookups.correct
        cut = cuts([Outcome(float(s[i]), float(m[i]), bool(c[i])) for i in fit], budget)
        s, m, c = s[test], m[test], c[test]
        hit = (s >= cut.similarity) | (m >= cut.agreement)
        share = float((hit & ~c).sum() / hit.sum()) if hit.any() else 0.0
        held += share <= budget
        served.append(float(hit.mean()))
        wrong.append(share)
        alone.append(float((s >= cut.similarity).mean()))
    return BudgetRun(
        budget,
        splits,
        held / splits,
        float(np.median(served)),
        float(np.median(wrong)),
        float(np.median(alone)),
    )


def read_labelled(path: Path) -> tuple[list[str], list[str]]:
    """(texts, labels) from a CSV with ``text`` and ``category`` columns."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"text", "category"} <= rows[0].keys():
        raise ValueError(f"{path}: needs the columns text and category (has {', '.join(rows[0])})")
    return [r["text"] for r in rows], [r["category"] for r in rows]


def labelled(
    model: MiniLM, cached: tuple[list[str], list[str]], lookups: tuple[list[str], list[str]]
) -> Lookups:
    """Each lookup's nearest entries in the cache, and whether the nearest has its label.

    An entry's answer is its label, as for an agent that answers with the
    intent (equal answers exactly when the intents are equal).
    """
    texts, labels = cached
    index = SemanticIndex(MemoryBudget(1 << 40), SystemClock(), max_entries=len(texts))
    entries = [labels[i].encode() for i in range(len(texts))]
    index.bulk_load("eval", "", embed_all(model, texts), entries, ttl=1e9)
    n = len(lookups[0])
    similarity, agreements, correct = np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
    for i, vector in enumerate(embed_all(model, lookups[0])):
        near = index.neighbours("eval", "", vector, NEIGHBOURS)
        similarity[i] = near[0].similarity
        agreements[i] = agreement([(f.similarity, f.value) for f in near], lambda v: v)
        correct[i] = near[0].value.decode() == lookups[1][i]
    return Lookups(similarity, agreements, correct)


def split_labelled(
    data: tuple[list[str], list[str]], seed: int
) -> tuple[tuple[list[str], list[str]], tuple[list[str], list[str]]]:
    """A fixed-seed half of the queries to cache, the other half to look up."""
    order = list(range(len(data[0])))
    random.Random(seed).shuffle(order)
    half = len(order) // 2

    def pick(indices: list[int]) -> tuple[list[str], list[str]]:
        return [data[0][i] for i in indices], [data[1][i] for i in indices]

    return pick(order[:half]), pick(order[half:])


def sample(
    data: tuple[list[str], list[str]], share: float, seed: int
) -> tuple[list[str], list[str]]:
    """A fixed-seed random ``share`` of labelled queries (all of them at 1)."""
    if share >= 1:
        return data
    if share <= 0:
        raise ValueError(f"--cache-share must be in (0, 1], not {share}")
    keep = sorted(random.Random(seed).sample(range(len(data[0])), round(len(data[0]) * share)))
    return [data[0][i] for i in keep], [data[1][i] for i in keep]


def pairs(model: MiniLM, path: Path, limit: int, seed: int) -> Lookups:
    """Similarity of each pair's two sides, and whether the pair is a duplicate.

    One entry per lookup: its agreement is its similarity."""
    raw = path.read_bytes()
    data = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    if limit and limit < len(data):
        data = random.Random(seed).sample(data, limit)
    a = embed_all(model, [d["text_a"] for d in data])
    b = embed_all(model, [d["text_b"] for d in data])
    similarity = (a * b).sum(1).astype(np.float64)
    correct = np.array([int(d["label"]) == 1 for d in data])
    return Lookups(similarity, similarity, correct)


def as_json(
    title: str, embedder: str, similarity: Array, correct: Bools, target: float
) -> dict[str, Any]:
    """The sweep and the safe threshold, for scripts (``--json``)."""
    safe = lowest_safe(similarity, correct, target)
    return {
        "data": title,
        "embedder": embedder,
        "lookups": len(similarity),
        "target": target,
        "sweep": [dataclasses.asdict(p) for p in sweep(similarity, correct)],
        "safe": dataclasses.asdict(safe) if safe is not None else None,
    }


def report(title: str, similarity: Array, correct: Bools, target: float) -> str:
    """The sweep as a Markdown table, and the safe threshold."""
    lines = [f"### {title} ({len(similarity):,} lookups)", ""]
    lines += ["| threshold | hit rate | wrong hits (share of hits) |", "|---|---|---|"]
    lines += [
        f"| {p.threshold:.2f} | {p.hit_rate:.1%} | {p.wrong_share:.1%} |"
        for p in sweep(similarity, correct)
    ]
    safe = lowest_safe(similarity, correct, target)
    lines.append("")
    if safe is None:
        lines.append(f"No threshold keeps wrong hits at or under {target:.0%}.")
    else:
        lines.append(
            f"Lowest threshold with wrong hits <= {target:.0%}: {safe.threshold:.3f} "
            f"(hit rate {safe.hit_rate:.1%}, wrong {safe.wrong_share:.1%})"
        )
    return "\n".join(lines)
