"""Build the demo's data slice, the example's domain examples and the built-in routing models.

    python scripts/build_demo_data.py [--shared ../shared/data]

Writes ``demo/tokenomy_demo/data/`` (Banking77 test queries, GSM8K questions
with both models' recorded answers, and Banking77 training queries used as
the example policy's domain examples) and trains the sidecar's built-in
complexity model (RouteLLM MMLU + GSM8K) and answer scorer (GSM8K), both
*without* the GSM8K questions the demo asks, so the demo's quality figure is
not measured on training data.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

from tokenomy_eval.cascade import fit_scorer
from tokenomy_eval.dataset import load_routellm
from tokenomy_eval.routing import fit_router, pair_for, price

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "demo" / "tokenomy_demo" / "data"
ROUTING = ROOT / "sidecar" / "tokenomy_sidecar" / "routing"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"
GSM8K_QUESTIONS = 200
SUPPORT_PER_INTENT = 15
EXAMPLES_PER_INTENT = 3


def write_policy_examples(texts: list[str]) -> None:
    """Put the examples into the example policy's ``support`` domain (between its markers)."""
    path = ROOT / "examples" / "costpolicy-support-agent.yaml"
    lines = path.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if "# examples: begin" in line)
    end = next(i for i, line in enumerate(lines) if "# examples: end" in line)
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    body = [f"{indent}- {json.dumps(t)}\n" for t in texts]
    path.write_text("".join([*lines[: start + 1], *body, *lines[end:]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)

    gsm8k = load_routellm(args.shared / "routellm-gsm8k", WEAK, STRONG)
    chosen = set(random.Random(8).sample(range(len(gsm8k)), GSM8K_QUESTIONS))
    with (DATA / "gsm8k.jsonl").open("w") as f:
        for i in sorted(chosen):
            q = gsm8k[i]
            row = {
                "question": q.prompt,
                "answers": {"weak": q.answers[WEAK], "strong": q.answers[STRONG]},
                "correct": {"weak": q.scores[WEAK] == 1.0, "strong": q.scores[STRONG] == 1.0},
            }
            f.write(json.dumps(row) + "\n")
    rest = [q for i, q in enumerate(gsm8k) if i not in chosen]

    by_intent: dict[str, list[str]] = defaultdict(list)
    with (args.shared / "banking77" / "test.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            by_intent[row["category"]].append(row["text"])
    with (DATA / "banking77.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["text", "category"])
        for intent in sorted(by_intent):
            for text in by_intent[intent][:SUPPORT_PER_INTENT]:
                out.writerow([text, intent])
    examples: dict[str, list[str]] = defaultdict(list)
    with (args.shared / "banking77" / "train.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if len(examples[row["category"]]) < EXAMPLES_PER_INTENT:
                examples[row["category"]].append(row["text"])
    (DATA / "domain-examples.json").write_text(json.dumps(examples, indent=1) + "\n")
    write_policy_examples([t for intent in sorted(examples) for t in examples[intent]])

    mmlu = load_routellm(args.shared / "routellm-mmlu", WEAK, STRONG)
    prices = {WEAK: price(Decimal("0.60"), Decimal("0.60")), STRONG: price("10", "30")}
    train = [*mmlu, *rest]
    model = fit_router(train, pair_for(train, WEAK, STRONG, prices), 0.95)
    model.save(ROUTING / "builtin_complexity.npz")
    scorer = fit_scorer(rest, WEAK, STRONG, 0.95)
    scorer.save(ROUTING / "builtin_scorer.npz")
    print(f"complexity cut {model.cut:.3f}; scorer cut {scorer.cut:.3f}; data in {DATA}")


if __name__ == "__main__":
    main()
