"""What the semantic cache costs in answer quality, on real data nobody here wrote.

Banking77 (customer-support queries, 77 intents): the training queries fill
the cache, each test query looks up its nearest entry through the sidecar's
own index (SemanticIndex, HNSW); a hit is correct when both have the same
intent. QQP (Quora question pairs, GPTCache's benchmark set): one side of a
pair is cached, the other looks it up; a hit is correct when the pair is
labelled a duplicate. For each threshold: hit rate, and the share of hits
that serve a wrong answer. Embedder: all-MiniLM-L6-v2 run in numpy by the
sidecar's local embedder (it saw Quora pairs in training, so its QQP figures
are optimistic; Banking77 is the fairer test).

    python bench/semantic_quality.py [--data ../shared/data] [--qqp-pairs 10000]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import time
from pathlib import Path

import numpy as np

from tokenomy_api.clock import SystemClock
from tokenomy_sidecar.local_embedder import MiniLM
from tokenomy_sidecar.semantic_index import SemanticIndex

THRESHOLDS = [0.70, 0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.98]
WRONG_TARGET = 0.02


def embed_all(model: MiniLM, texts: list[str], batch: int = 64) -> np.ndarray:
    """Embed in batches of similar length, so padding stays small."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.dimensions), dtype=np.float32)
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        out[chunk] = model.embed([texts[i] for i in chunk])
    return out


def sweep(similarity: np.ndarray, correct: np.ndarray) -> list[tuple[float, float, float, int]]:
    """(threshold, hit rate, wrong-hit share, hits) per threshold."""
    rows = []
    for t in THRESHOLDS:
        hit = similarity >= t
        hits = int(hit.sum())
        wrong = int((hit & ~correct).sum())
        rows.append((t, hits / len(similarity), wrong / hits if hits else 0.0, hits))
    return rows


def best_under_target(similarity: np.ndarray, correct: np.ndarray) -> tuple[float, float, float]:
    """The lowest threshold (finest 0.005 grid) keeping wrong hits at or under the target."""
    for t in np.arange(0.50, 1.0001, 0.005):
        hit = similarity >= t
        hits = int(hit.sum())
        if hits and (hit & ~correct).sum() / hits <= WRONG_TARGET:
            return float(t), hits / len(similarity), float((hit & ~correct).sum() / hits)
    return 1.0, 0.0, 0.0


def banking77(model: MiniLM, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    def read(name: str) -> tuple[list[str], list[str]]:
        with (folder / name).open(newline="") as f:
            rows = list(csv.DictReader(f))
        return [r["text"] for r in rows], [r["category"] for r in rows]

    train_text, train_label = read("train.csv")
    test_text, test_label = read("test.csv")
    cached = embed_all(model, train_text)
    queries = embed_all(model, test_text)
    index = SemanticIndex(max_entries=len(train_text), clock=SystemClock())
    index.bulk_load("banking77", cached, [str(i).encode() for i in range(len(train_text))], ttl=1e9)
    similarity = np.zeros(len(test_text))
    correct = np.zeros(len(test_text), dtype=bool)
    for i, vector in enumerate(queries):
        found = index.search("banking77", vector)
        assert found is not None
        similarity[i] = found[0]
        correct[i] = train_label[int(found[1])] == test_label[i]
    return similarity, correct


def qqp(model: MiniLM, path: Path, pairs: int) -> tuple[np.ndarray, np.ndarray]:
    data = json.loads(gzip.decompress(path.read_bytes()))
    if pairs and pairs < len(data):
        data = random.Random(0).sample(data, pairs)
    a = embed_all(model, [d["text_a"] for d in data])
    b = embed_all(model, [d["text_b"] for d in data])
    return (a * b).sum(1), np.array([d["label"] == 1 for d in data])


def report(name: str, similarity: np.ndarray, correct: np.ndarray) -> None:
    print(f"\n### {name} ({len(similarity):,} lookups)\n")
    print("| threshold | hit rate | wrong hits (share of hits) |")
    print("|---|---|---|")
    for t, rate, wrong, _ in sweep(similarity, correct):
        print(f"| {t:.2f} | {rate:.1%} | {wrong:.1%} |")
    t, rate, wrong = best_under_target(similarity, correct)
    print(
        f"\nLowest threshold with wrong hits <= {WRONG_TARGET:.0%}: {t:.3f} (hit rate {rate:.1%}, wrong {wrong:.1%})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    parser.add_argument("--qqp-pairs", type=int, default=10_000, help="0 for all 80,854")
    args = parser.parse_args()
    model = MiniLM()
    t0 = time.perf_counter()
    report(
        "Banking77: test queries against a cache of the training queries",
        *banking77(model, args.data / "banking77"),
    )
    report(
        "QQP: one question of each pair against the other",
        *qqp(model, args.data / "qqp" / "qqp_pairs.json.gz", args.qqp_pairs),
    )
    print(f"\nembedder: all-MiniLM-L6-v2 (numpy, this repo); {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
