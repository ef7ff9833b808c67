"""``tokenomy eval routing``: score the complexity router on data with known outcomes."""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

from tokenomy_eval.dataset import Query, load_jsonl, load_routellm, load_routerbench, split
from tokenomy_eval.routing import Price, evaluate


def _price(text: str) -> tuple[str, Price]:
    model, _, numbers = text.rpartition("=")
    try:
        given, _, output = numbers.partition("/")
        return model, Price(Decimal(given), Decimal(output or given))
    except InvalidOperation:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not MODEL=INPUT/OUTPUT (USD per million tokens)"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``eval``'s arguments."""
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    routing = sub.add_parser(
        "routing", help="cost and quality of complexity routing between two models"
    )
    data = routing.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", type=Path, help="one data set, split by --seed into train and test")
    data.add_argument("--train", type=Path, help="training file (with --test)")
    routing.add_argument("--test", type=Path, help="test file (with --train)")
    routing.add_argument(
        "--format", choices=["routellm", "jsonl", "routerbench"], default="routellm"
    )
    routing.add_argument("--weak", default="mistralai/Mixtral-8x7B-Instruct-v0.1")
    routing.add_argument("--strong", default="gpt-4-1106-preview")
    routing.add_argument(
        "--price",
        type=_price,
        action="append",
        default=[],
        metavar="MODEL=IN/OUT",
        help="list price in USD per million tokens, for data without costs",
    )
    routing.add_argument("--test-share", type=float, default=0.5)
    routing.add_argument("--seed", type=int, default=0)
    routing.add_argument(
        "--quality", type=float, default=0.95, help="share of the strong model's quality to keep"
    )


def _load(path: Path, fmt: str, weak: str, strong: str) -> list[Query]:
    if fmt == "jsonl":
        return load_jsonl(path)
    if fmt == "routerbench":
        return load_routerbench(path, [weak, strong])
    return load_routellm(path, weak, strong)


def run(args: argparse.Namespace) -> int:
    """Print the comparison table, or one line saying what is wrong (exit 2)."""
    try:
        if args.data is not None:
            train_set, test_set = split(
                _load(args.data, args.format, args.weak, args.strong), args.test_share, args.seed
            )
        else:
            if args.test is None:
                raise ValueError("--train needs --test")
            train_set = _load(args.train, args.format, args.weak, args.strong)
            test_set = _load(args.test, args.format, args.weak, args.strong)
        rows = evaluate(
            train_set, test_set, args.weak, args.strong, dict(args.price), fraction=args.quality
        )
    except (OSError, ValueError, KeyError) as error:
        print(f"tokenomy eval: {error}", file=sys.stderr)
        return 2
    sizes = f"train {len(train_set):,} / test {len(test_set):,} queries"
    print(f"{sizes}; weak {args.weak}, strong {args.strong}", end="\n\n")
    print("| router | cost reduction | strong calls | quality vs strong | CPT(50%) | APGR |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r.cost_reduction:.1%}", f"{r.strong_share:.1%}", f"{r.quality:.1%}"]
        print(f"| {r.name} | {' | '.join(cells)} | {r.cpt50:.1%} | {r.apgr:.3f} |")
    return 0
