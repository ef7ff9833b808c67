"""``tokenomy eval``: routing, cascading and the semantic cache, scored on known outcomes."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from decimal import InvalidOperation
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tokenomy_api.compiled import CompiledToolPruning, Price
from tokenomy_eval import cache, tools
from tokenomy_eval.cascade import CascadeResult, evaluate_agreement, evaluate_cascade
from tokenomy_eval.dataset import (
    Query,
    load_jsonl,
    load_mtbench,
    load_routellm,
    load_routerbench,
    split,
)
from tokenomy_eval.routing import (
    CONFIDENCE,
    RANDOM_CALIBRATED,
    Evaluation,
    Row,
    evaluate,
    price,
)
from tokenomy_eval.tiers import evaluate_tiers, recommend
from tokenomy_sidecar.local_embedder import MiniLM
from tokenomy_sidecar.routing.complexity import ComplexityModel

WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"


def parse_price(text: str) -> tuple[str, Price]:
    """``MODEL=IN/OUT`` (USD per million tokens; ``MODEL=P`` for both)."""
    model, _, numbers = text.rpartition("=")
    try:
        given, _, output = numbers.partition("/")
        return model, price(given, output or given)
    except (InvalidOperation, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not MODEL=INPUT/OUTPUT (USD per million tokens)"
        ) from None


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data, model pair and price arguments shared by routing, cascade and router train."""
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", type=Path, help="one data set, split by --seed into train and test")
    data.add_argument("--train", type=Path, help="training file (with --test)")
    parser.add_argument("--test", type=Path, help="test file (with --train)")
    parser.add_argument(
        "--format", choices=["routellm", "jsonl", "routerbench", "mtbench"], default="routellm"
    )
    parser.add_argument("--weak", default=WEAK, help=f"the cheaper model (default {WEAK})")
    parser.add_argument("--strong", default=STRONG, help=f"the stronger model (default {STRONG})")
    parser.add_argument(
        "--price",
        type=parse_price,
        action="append",
        default=[],
        metavar="MODEL=IN/OUT",
        help="list price in USD per million tokens, for data without costs",
    )
    parser.add_argument("--test-share", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quality", type=float, default=0.95, help="share of the strong model's quality to keep"
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=CONFIDENCE,
        help="probability that --quality holds on unseen data (default %(default)s)",
    )


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--json`` and ``--splits``, for routing and cascade."""
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--splits",
        type=int,
        default=1,
        help="with --data: repeat over this many random splits (seeds --seed, --seed+1, ...) "
        "and report how often the quality target held on test",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``eval``'s arguments."""
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    routing = sub.add_parser("routing", help="complexity routing between two models")
    add_data_arguments(routing)
    add_output_arguments(routing)
    routing.add_argument("--plot", type=Path, help="draw cost against quality into this PNG")
    routing.add_argument(
        "--tiers",
        metavar="A,B,C",
        help="route over these models, cheapest first, the last the reference (instead of "
        "--weak and --strong)",
    )
    routing.add_argument(
        "--model",
        type=Path,
        help="score this saved router (tokenomy router train -o FILE) as it is, cut included, "
        "instead of fitting one on the train split",
    )
    routing.add_argument(
        "--no-cost-aware", dest="cost_aware", action="store_false",
        help="rank by predicted gain alone, not gain per relative cost",
    )  # fmt: skip
    cascade = sub.add_parser(
        "cascade", help="cascade on the weak model's recorded answer, beside routing"
    )
    add_data_arguments(cascade)
    add_output_arguments(cascade)
    cascade.add_argument(
        "--method",
        choices=["scorer", "agreement"],
        default="scorer",
        help="how the weak answer is judged: the learned answer scorer, or the agreement of "
        "--samples recorded samples (the JSONL's `samples`)",
    )
    cascade.add_argument("--samples", type=int, default=5, help="samples for --method agreement")
    cascade.add_argument("--plot", type=Path, help="draw cost against quality into this PNG")
    tiers = sub.add_parser("tiers", help="which models to put in a ModelRoute")
    add_data_arguments(tiers)
    tiers.add_argument(
        "--models", required=True, metavar="A,B,...", help="the candidate models (2 or more)"
    )
    tiers.add_argument(
        "--reference", help="the reference tier (default: the best-scoring candidate)"
    )
    tiers.add_argument("--max-tiers", type=int, default=3, help="tiers a route may have")
    tiers.add_argument("--json", action="store_true", help="print the results as JSON")
    tiers.add_argument(
        "--no-cost-aware", dest="cost_aware", action="store_false",
        help="rank by predicted gain alone, not gain per relative cost",
    )  # fmt: skip
    cache = sub.add_parser("cache", help="semantic cache hit rate and wrong hits per threshold")
    kind = cache.add_mutually_exclusive_group(required=True)
    kind.add_argument("--labelled", type=Path, help="CSV of text,category (as Banking77)")
    kind.add_argument("--pairs", type=Path, help="JSON[.gz] of {text_a,text_b,label} (as QQP)")
    cache.add_argument("--lookups", type=Path, help="labelled CSV to look up (default: half)")
    cache.add_argument("--limit", type=int, default=10_000, help="pairs sampled; 0 for all")
    cache.add_argument(
        "--cache-share",
        type=float,
        default=1.0,
        help="cache only this random share of the labelled queries (a sparser cache)",
    )
    cache.add_argument("--target", type=float, default=0.02, help="wrong-hit share to stay under")
    cache.add_argument("--seed", type=int, default=0)
    cache.add_argument(
        "--precision",
        choices=["int8", "fp32"],
        default="int8",
        help="the local embedder's (int8: as the sidecar runs it)",
    )
    cache.add_argument("--json", action="store_true", help="print the sweep as JSON")
    cache.add_argument(
        "--budget",
        type=float,
        help="also a wrong-hit budget as the sidecar runs it: the similarity and agreement "
        "cuts from the outcomes of a random half of the lookups (99 %% upper bound), serving "
        "the other half, over --splits splits",
    )
    cache.add_argument("--splits", type=int, default=20)
    pruning = sub.add_parser("tools", help="tool-definition pruning on recorded requests (BFCL)")
    pruning.add_argument("--data", type=Path, required=True, help="a BFCL file, or its folder")
    pruning.add_argument("--min-tools", type=int, default=CompiledToolPruning().min_tools)
    pruning.add_argument("--keep-share", type=float, default=CompiledToolPruning().keep_share)
    pruning.add_argument("--json", action="store_true", help="print the rows as JSON")


def load(path: Path, fmt: str, weak: str, strong: str, more: Sequence[str] = ()) -> list[Query]:
    """Queries from a file in one of the supported formats, each with every model's score
    (``weak``, ``strong`` and ``more``)."""
    models = list(dict.fromkeys([weak, *more, strong]))
    if fmt == "routerbench":
        return load_routerbench(path, models)
    if fmt == "mtbench":
        return load_mtbench(path, models)
    if fmt == "routellm":
        if len(models) > 2:
            raise ValueError("RouteLLM's files hold two models: --tiers needs another format")
        return load_routellm(path, weak, strong)
    queries = load_jsonl(path)
    kept = [q for q in queries if all(m in q.scores for m in models)]
    if len(kept) < len(queries):
        print(
            f"tokenomy eval: {path}: skipped {len(queries) - len(kept)} of {len(queries)} "
            f"queries without a score for each of {', '.join(models)}",
            file=sys.stderr,
        )
    return kept


def tier_models(args: argparse.Namespace) -> list[str]:
    """``--tiers`` as a list (cheapest first), or the weak and strong model."""
    tiers = getattr(args, "tiers", None)
    return [m for m in tiers.split(",") if m] if tiers else [args.weak, args.strong]


def ends(args: argparse.Namespace) -> tuple[str, str, list[str]]:
    """(cheapest, reference, the models between) for :func:`load`."""
    models = tier_models(args)
    return models[0], models[-1], models[1:-1]


def train_and_test(args: argparse.Namespace) -> tuple[list[Query], list[Query]]:
    """The train and test queries the arguments name."""
    if args.data is not None:
        return split(load(args.data, args.format, *ends(args)), args.test_share, args.seed)
    if args.test is None:
        raise ValueError("--train needs --test")
    return (
        load(args.train, args.format, *ends(args)),
        load(args.test, args.format, *ends(args)),
    )


def table(rows: Sequence[Row]) -> str:
    """Rows as the README's Markdown table."""
    lines = [
        "| router | cost reduction | strong calls | quality vs strong | CPT(50%) | APGR |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r.cost_reduction:.1%}", f"{r.strong_share:.1%}", f"{r.quality:.1%}"]
        cpt = f"{r.cpt50:.1%}" if r.cpt50 is not None else "—"
        apgr = f"{r.apgr:.3f}" if r.apgr is not None else "—"
        lines.append(f"| {r.name} | {' | '.join(cells)} | {cpt} | {apgr} |")
    return "\n".join(lines)


def _models(args: argparse.Namespace, train_set: list[Query], test_set: list[Query]) -> str:
    sizes = f"train {len(train_set):,} / test {len(test_set):,} queries"
    return f"{sizes}; weak {args.weak}, strong {args.strong}"


def _run_tools(args: argparse.Namespace) -> int:
    pruning = CompiledToolPruning(min_tools=args.min_tools, keep_share=args.keep_share)
    requests = tools.load_bfcl(args.data)
    model = MiniLM()

    def embed(text: str) -> npt.NDArray[np.float32]:
        vector: npt.NDArray[np.float32] = model.embed([text])[0]
        return vector

    pool = tools.pool_of(requests)
    rows = [
        tools.evaluate(requests, pruning, embed),
        tools.evaluate(requests, pruning, embed, pool),
        tools.evaluate(requests, pruning, None, pool),
    ]
    if args.json:
        print(json.dumps({"pool": len(pool), "rows": [dataclasses.asdict(r) for r in rows]}))
        return 0
    print(
        f"{args.data}: {len(requests):,} requests; keep the best {args.keep_share:.0%} of the "
        f"definitions offered, at least {args.min_tools} (never prune {args.min_tools} or "
        "fewer)\n"
    )
    print(tools.table(rows, len(pool)))
    return 0


def _run_cache(args: argparse.Namespace) -> int:
    model = MiniLM(precision=args.precision)
    if args.pairs is not None:
        found = cache.pairs(model, args.pairs, args.limit, args.seed)
        title = f"{args.pairs.name}: one side of each pair against the other"
    else:
        data = cache.read_labelled(args.labelled)
        if args.lookups is not None:
            stored, lookups = data, cache.read_labelled(args.lookups)
        else:
            stored, lookups = cache.split_labelled(data, args.seed)
        stored = cache.sample(stored, args.cache_share, args.seed)
        found = cache.labelled(model, stored, lookups)
        title = f"{args.labelled.name}: {len(stored[0]):,} queries cached"
    embedder = f"all-MiniLM-L6-v2, {args.precision} (the sidecar's local embedder)"
    similarity, correct = found.similarity, found.correct
    budget = (
        cache.budget_splits(found, args.budget, args.splits, args.seed)
        if args.budget is not None
        else None
    )
    if args.json:
        out = cache.as_json(title, embedder, similarity, correct, args.target)
        out["budget"] = dataclasses.asdict(budget) if budget is not None else None
        print(json.dumps(out))
        return 0
    print(cache.report(title, similarity, correct, args.target))
    if budget is not None:
        print(
            f"\nWrong-hit budget {budget.budget:.1%}, {budget.splits} random splits: held in "
            f"{budget.held:.0%} of them; median served {budget.served:.1%}, "
            f"median wrong {budget.wrong:.1%} (the similarity rule alone: "
            f"{budget.by_similarity:.1%} served)"
        )
    print(f"\nembedder: {embedder}")
    return 0


def one_split(
    args: argparse.Namespace, train_set: list[Query], test_set: list[Query]
) -> tuple[Evaluation, CascadeResult | None]:
    """The routers (and the cascade) on one train/test split."""
    prices = dict(args.price)
    result = None
    if args.what == "cascade" and args.method == "agreement":
        result = evaluate_agreement(
            train_set, test_set, args.weak, args.strong, prices, args.samples,
            fraction=args.quality, confidence=args.confidence,
        )  # fmt: skip
    elif args.what == "cascade":
        result = evaluate_cascade(
            train_set, test_set, args.weak, args.strong, prices,
            fraction=args.quality, confidence=args.confidence,
        )  # fmt: skip
    if getattr(args, "tiers", None):
        evaluation = evaluate_tiers(
            train_set, test_set, tier_models(args), prices, fraction=args.quality,
            cost_aware=args.cost_aware, confidence=args.confidence,
        )  # fmt: skip
        return evaluation, result
    saved = getattr(args, "model", None)
    evaluation = evaluate(
        train_set, test_set, args.weak, args.strong, prices, fraction=args.quality,
        cost_aware=getattr(args, "cost_aware", True), confidence=args.confidence,
        model=ComplexityModel.load(saved) if saved is not None else None,
    )  # fmt: skip
    return evaluation, result


def _run_tiers(args: argparse.Namespace) -> int:
    """Recommend the cheapest route of the candidates that keeps the quality target."""
    models = [m for m in args.models.split(",") if m]
    if len(models) < 2:
        raise ValueError("--models needs two candidates at least")
    args.tiers = ",".join(models)  # load every candidate's scores
    train_set, test_set = train_and_test(args)
    reference = args.reference or max(models, key=lambda m: sum(q.scores[m] for q in train_set))
    if reference not in models:
        raise ValueError(f"--reference {reference} is not among --models")
    found, scored = recommend(
        train_set, test_set, models, reference, dict(args.price), args.max_tiers,
        args.quality, args.confidence, args.cost_aware,
    )  # fmt: skip
    if args.json:
        print(json.dumps({
            "reference": reference,
            "candidates": [dataclasses.asdict(c) for c in found],
            "recommended": dataclasses.asdict(scored) if scored is not None else None,
        }))  # fmt: skip
        return 0
    print(f"reference {reference}; routes judged on half of the train split, cheapest first:\n")
    print("| tiers (cheapest first) | cost vs reference alone | quality vs reference |")
    print("|---|---|---|")
    for c in found[:10]:
        print(f"| {', '.join(c.models)} | {c.cost:.1%} | {c.quality:.1%} |")
    if scored is None:
        print(f"\nNo route kept {args.quality:.0%} of {reference}'s quality: use it alone.")
    else:
        best = next(c for c in found if c.quality >= args.quality)
        print(
            f"\nRecommended: {', '.join(best.models)}; on the test split it saves "
            f"{scored.cost_reduction:.1%} at {scored.quality:.1%} of {reference}'s quality."
        )
    return 0


def _run_splits(args: argparse.Namespace) -> int:
    """The first row (the cascade, else the complexity router) over random splits."""
    if args.data is None:
        raise ValueError("--splits needs --data (one data set to split)")
    seeds = range(args.seed, args.seed + args.splits)
    found = []
    best_random: list[float] = []
    for seed in seeds:
        train_set, test_set = train_and_test(argparse.Namespace(**{**vars(args), "seed": seed}))
        evaluation, result = one_split(args, train_set, test_set)
        rows = {r.name: r for r in evaluation.rows}
        mine = result.row if result is not None else evaluation.rows[0]
        found.append((seed, mine, rows[RANDOM_CALIBRATED], rows["perfect router"]))
        if "random router" in rows:  # two tiers: the random curve's best test point
            best_random.append(rows["random router"].cost_reduction)
    held = sum(m.quality >= args.quality - 1e-9 for _, m, _, _ in found)
    summary = {
        "data": str(args.data),
        "lever": found[0][1].name,
        "quality": args.quality,
        "confidence": args.confidence,
        "splits": len(found),
        "held": held / len(found),
        "cost_reduction": float(np.mean([m.cost_reduction for _, m, _, _ in found])),
        "random": float(np.mean([r.cost_reduction for _, _, r, _ in found])),
        "random_best_test_point": float(np.mean(best_random)) if best_random else None,
        "perfect": float(np.mean([p.cost_reduction for _, _, _, p in found])),
        "worst_quality": float(min(m.quality for _, m, _, _ in found)),
        "per_split": [
            {"seed": seed, "cost_reduction": m.cost_reduction, "quality": m.quality}
            for seed, m, _, _ in found
        ],
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"{summary['lever']} on {args.data}, {len(found)} splits, target {args.quality:.0%} "
        f"of the strong model's quality at {args.confidence:.0%} confidence:\n"
        f"  target held on test in {summary['held']:.0%} of the splits "
        f"(worst {summary['worst_quality']:.1%})\n"
        f"  cost reduction {summary['cost_reduction']:.1%} on average; random routing "
        f"calibrated the same way {summary['random']:.1%}, perfect {summary['perfect']:.1%}"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Print the comparison, or one line saying what is wrong (exit 2)."""
    try:
        if args.what == "cache":
            return _run_cache(args)
        if args.what == "tiers":
            return _run_tiers(args)
        if args.what == "tools":
            return _run_tools(args)
        if args.splits > 1:
            return _run_splits(args)
        train_set, test_set = train_and_test(args)
        evaluation, result = one_split(args, train_set, test_set)
    except (OSError, ValueError, KeyError) as error:
        print(f"tokenomy eval: {error}", file=sys.stderr)
        return 2
    if args.json:
        rows = ([result.row] if result else []) + evaluation.rows
        print(json.dumps({"seed": args.seed, "rows": [dataclasses.asdict(r) for r in rows]}))
        return 0
    print(_models(args, train_set, test_set), end="\n\n")
    print(table(([result.row] if result else []) + evaluation.rows))
    if result is not None:
        why = ", ".join(f"{k} {v}" for k, v in sorted(result.reasons.items()))
        print(f"\ncascade verdicts on the test split: {why}")
    if args.plot is not None:
        try:
            # matplotlib is an optional extra: only --plot needs it.
            from tokenomy_eval.plot import draw  # noqa: PLC0415
        except ImportError:
            print(
                "tokenomy eval: --plot needs matplotlib: pip install 'tokenomy[plot]'",
                file=sys.stderr,
            )
            return 2
        data = args.data or args.test
        title = f"{args.what} on {data.name}: {len(test_set):,} test queries (seed {args.seed})"
        draw(args.plot, title, evaluation, result, args.quality)
        print(f"\nplot: {args.plot}")
    return 0
