"""``tokenomy router train``: fit the complexity model (or the cascade's scorer) on outcomes.

The outcomes are a user's own, e.g. from shadow comparisons in production:
per prompt, whether the cheaper and the stronger model answered well (the
JSONL format of ``tokenomy eval``), or the RouteLLM/RouterBench files. The
model is fit on half of them and its cut chosen on the other half so that
``--quality`` of the stronger model's quality holds on unseen requests with
probability ``--confidence`` (:mod:`tokenomy_eval.guarantee`); it is saved in
the model, so nobody hand-tunes a threshold. When the outcomes support no
saving at that confidence, the cut sends everything to the stronger model
and the command says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokenomy_eval.cascade import fit_scorer
from tokenomy_eval.cli import STRONG, WEAK, load, parse_price
from tokenomy_eval.dataset import Query
from tokenomy_eval.routing import CONFIDENCE, fit_router, pair_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``router``'s arguments."""
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    train = sub.add_parser("train", help="train a routing model on known outcomes")
    train.add_argument(
        "--data", type=Path, action="append", required=True, help="outcomes (repeatable)"
    )
    train.add_argument(
        "--format", choices=["routellm", "jsonl", "routerbench", "mtbench"], default="jsonl"
    )
    train.add_argument("--weak", default=WEAK)
    train.add_argument("--strong", default=STRONG)
    train.add_argument("--price", type=parse_price, action="append", default=[])
    train.add_argument("--quality", type=float, default=0.95)
    train.add_argument(
        "--confidence", type=float, default=CONFIDENCE,
        help="probability that --quality holds on unseen data",
    )  # fmt: skip
    train.add_argument(
        "--scorer", action="store_true", help="train the cascade's answer scorer instead"
    )
    train.add_argument("-o", "--output", type=Path, required=True, help="model file to write")


def run(args: argparse.Namespace) -> int:
    """Train, save, and say what was learnt; one line and exit 2 on bad input."""
    try:
        queries: list[Query] = []
        for path in args.data:
            queries += load(path, args.format, args.weak, args.strong)
        if len(queries) < 50:
            raise ValueError(f"{len(queries)} outcomes are too few to train on (50 at least)")
        if args.scorer:
            scorer = fit_scorer(queries, args.weak, args.strong, args.quality, args.confidence)
            scorer.save(args.output)
            print(
                f"{args.output}: answer scorer from {len(queries):,} answers, cut {scorer.cut:.3f}"
            )
            return 0
        pair = pair_for(queries, args.weak, args.strong, dict(args.price))
        model = fit_router(queries, pair, args.quality, confidence=args.confidence)
        model.save(args.output)
    except (OSError, ValueError, KeyError) as error:
        print(f"tokenomy router: {error}", file=sys.stderr)
        return 2
    if model.cut == float("-inf"):
        print(
            f"{args.output}: {len(queries):,} outcomes support no saving at {args.quality:.0%} "
            f"quality with {args.confidence:.0%} confidence: the model sends everything to "
            f"{args.strong}; more outcomes, a lower --quality or --confidence would allow one",
            file=sys.stderr,
        )
    print(
        f"{args.output}: complexity model from {len(queries):,} outcomes, cut {model.cut:.3f}, "
        f"{model.mean_input_tokens:.0f} input / {model.mean_output_tokens:.0f} output tokens "
        f"on average ({args.output.stat().st_size / 1e6:.1f} MB)"
    )
    return 0
