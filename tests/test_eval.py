"""Offline routing evaluation: RouteLLM's metrics, loaders, and the complexity model."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tokenomy_eval import cache, metrics
from tokenomy_eval.cascade import evaluate_cascade
from tokenomy_eval.dataset import (
    Query,
    load_jsonl,
    load_mtbench,
    load_routellm,
    load_routerbench,
    split,
)
from tokenomy_eval.routing import (
    Pair,
    decide,
    evaluate,
    fit_router,
    price,
    scores_for,
)
from tokenomy_sidecar.routing.complexity import ComplexityModel, features
from tokenomy_sidecar.routing.scorer import AnswerScorer

WEAK = np.array([1.0, 0.0, 1.0, 0.0])
STRONG = np.array([1.0, 1.0, 1.0, 0.0])
CHEAP = np.full(4, 1.0)
DEAR = np.full(4, 10.0)


def test_curve_follows_the_scores() -> None:
    c = metrics.curve([0.1, 0.9, 0.2, 0.3], WEAK, STRONG, CHEAP, DEAR, steps=4)
    # 0 %: all weak; 25 %: query 1 (the one weak gets wrong) goes strong; 100 %: all strong.
    assert list(c.quality) == [0.5, 0.75, 0.75, 0.75, 0.75]
    assert list(c.cost) == [4.0, 13.0, 22.0, 31.0, 40.0]


def test_random_and_perfect_baselines() -> None:
    r = metrics.random_curve(WEAK, STRONG, CHEAP, DEAR, steps=4)
    assert r.quality[0] == 0.5
    assert r.quality[-1] == 0.75
    assert metrics.apgr(r, 0.5, 0.75) == pytest.approx(0.5)
    assert metrics.cpt(r, 0.5, 0.75, 0.5) == pytest.approx(0.5)
    perfect = metrics.curve(
        metrics.perfect_scores(WEAK, STRONG), WEAK, STRONG, CHEAP, DEAR, steps=4
    )
    assert metrics.cpt(perfect, 0.5, 0.75, 1.0) == pytest.approx(0.25)
    reduction, share = metrics.cost_reduction_at(perfect, 0.75, 40.0, fraction=1.0)
    assert (reduction, share) == (pytest.approx(1 - 13 / 40), 0.25)


def test_cost_reduction_when_nothing_reaches_the_target() -> None:
    c = metrics.curve([0, 0, 0, 0], WEAK, np.zeros(4), CHEAP, DEAR, steps=4)
    assert metrics.cost_reduction_at(c, 1.0, 40.0) == (0.0, 1.0)


def test_features_are_normalised_hashed_ngrams() -> None:
    indices, values = features("Hello hello world")
    assert len(indices) == 4  # hello, world, "hello hello", "hello world"
    assert float(np.linalg.norm(values)) == pytest.approx(1.0)
    assert len(features("")[0]) == 0


def toy(n: int, seed: int) -> list[Query]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        hard = rng.random() < 0.4
        words = rng.sample(["alpha", "beta", "gamma", "delta", "omega"], 2)
        prompt = " ".join([*words, "integral proof" if hard else "greeting"])
        out.append(
            Query(
                prompt,
                {"weak": 0.0 if hard else 1.0, "strong": 1.0},
                tokens={"weak": (10, 5), "strong": (10, 5)},
            )
        )
    return out


def test_complexity_model_learns_and_round_trips(tmp_path: Path) -> None:
    queries = toy(300, 1)
    model = ComplexityModel.empty(1 << 12).fit(
        [q.prompt for q in queries], [1 - q.scores["weak"] for q in queries]
    )
    assert model.score("beta gamma integral proof") > 0.8
    assert model.score("beta gamma greeting") < 0.2
    model.save(tmp_path / "m.npz")
    again = ComplexityModel.load(tmp_path / "m.npz")
    assert again.score("alpha integral proof") == pytest.approx(model.score("alpha integral proof"))


def test_evaluate_beats_random_on_learnable_data() -> None:
    train, test = toy(400, 2), toy(200, 3)
    prices = {
        "weak": price("0.1", "0.1"),
        "strong": price("10", "30"),
    }
    rows = {r.name: r for r in evaluate(train, test, "weak", "strong", prices).rows}
    router, randomly = rows["complexity router"], rows["random router"]
    assert router.quality >= 0.95
    assert router.cost_reduction > randomly.cost_reduction + 0.2
    # A router that separates the classes matches the perfect one: PGR 1 from the hard share on.
    assert router.apgr == pytest.approx(rows["perfect router"].apgr, abs=0.02)
    assert router.apgr > randomly.apgr + 0.2


def test_missing_price_is_a_clear_error() -> None:
    queries = [Query("q", {"weak": 1.0, "strong": 1.0})]
    with pytest.raises(ValueError, match="pass --price strong=IN/OUT"):
        evaluate(queries * 10, queries, "weak", "strong", {"weak": price("1", "1")})


def test_loaders(tmp_path: Path) -> None:
    folder = tmp_path / "mmlu"
    folder.mkdir()
    (folder / "mmlu_x.csv").write_text(
        'prompt,W,S\n"Q one\nA. yes",True,False\nQ two,False,True\nleaked,True,True\n'
    )
    (folder / "contaminated_prompts.jsonl").write_text(
        json.dumps({"eval_prompt": "leaked", "train_prompt": "t"}) + "\n"
    )
    queries = load_routellm(folder, "W", "S")
    assert [(q.prompt, q.scores) for q in queries] == [
        ("Q one\nA. yes", {"W": 1.0, "S": 0.0}),
        ("Q two", {"W": 0.0, "S": 1.0}),
    ]

    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text(
        json.dumps({"prompt": "p", "scores": {"a": 1, "b": 0.5}, "costs": {"a": 0.002}})
        + "\n\n"
        + '{"prompt": "x"}\n'
    )
    with pytest.raises(ValueError, match=r"q.jsonl:3: KeyError\('scores'\)"):
        load_jsonl(jsonl)
    jsonl.write_text(
        json.dumps({"prompt": "p", "scores": {"a": 1, "b": 0.5}, "costs": {"a": 0.002}}) + "\n"
    )
    [query] = load_jsonl(jsonl)
    assert query.costs == {"a": Decimal("0.002")}

    bench = tmp_path / "rb.csv"
    bench.write_text(
        "prompt,a,b,a|model_response,a|total_cost,b|total_cost\nhi,1,0.5,yo,0.001,0.03\n"
    )
    [row] = load_routerbench(bench, ["a", "b"])
    assert row.scores == {"a": 1.0, "b": 0.5}
    assert row.costs == {"a": Decimal("0.001"), "b": Decimal("0.03")}


def test_loaders_skip_empty_cells_and_name_the_bad_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bench = tmp_path / "rb.csv"
    header = "prompt,a,b,a|total_cost\n"
    bench.write_text(header + "hi,1,0.5,0.001\nempty,,0.5,0.001\nalso,1,,\n")
    [row] = load_routerbench(bench, ["a", "b"])  # once: could not convert string to float
    assert row.prompt == "hi"
    assert "skipped 2 of 3 rows with an empty score cell" in caplog.text
    bench.write_text(header + "hi,1,0.5,0.001\nbad,1,high,0.001\n")
    with pytest.raises(ValueError, match=r"rb.csv:3: column 'b': 'high' is not a number"):
        load_routerbench(bench, ["a", "b"])
    with pytest.raises(ValueError, match=r"rb.csv: no column 'c'"):
        load_routerbench(bench, ["a", "c"])
    mmlu = tmp_path / "mmlu.csv"
    mmlu.write_text("prompt,W,S\nq1,True,True\nq2,,False\n")
    assert [q.prompt for q in load_routellm(mmlu, "W", "S")] == ["q1"]


def test_mtbench_loader_reads_judge_scores_per_turn(tmp_path: Path) -> None:
    questions = [{"question_id": 1, "turns": ["Write a poem.", "Now shorter."]},
                 {"question_id": 2, "turns": ["Leaked question", "Again"]}]  # fmt: skip
    (tmp_path / "question.jsonl").write_text("\n".join(map(json.dumps, questions)))
    judged = [
        {"question_id": q, "model": m, "turn": t, "score": s}
        for q, t, m, s in [(1, 1, "W", 6), (1, 1, "S", 9), (1, 2, "W", 8), (1, 2, "S", -1),
                           (2, 1, "W", 5), (2, 1, "S", 5)]
    ]  # fmt: skip
    (tmp_path / "judgements.jsonl").write_text("\n".join(map(json.dumps, judged)))
    leaked = {"eval_prompt": "Leaked question"}
    (tmp_path / "contaminated_prompts.jsonl").write_text(json.dumps(leaked))
    [query] = load_mtbench(tmp_path, ["W", "S"])  # turn 2 has no valid score for S
    assert query.prompt == "Write a poem."
    assert query.scores == {"W": 0.6, "S": 0.9}


def test_split_is_fixed_by_its_seed() -> None:
    queries = toy(50, 4)
    assert split(queries, 0.5, 7) == split(queries, 0.5, 7)
    train, test = split(queries, 0.2, 0)
    assert (len(train), len(test)) == (40, 10)
    assert {q.prompt for q in train + test} == {q.prompt for q in queries}


def test_eval_command(tmp_path: Path) -> None:
    data = tmp_path / "toy.jsonl"
    data.write_text(
        "\n".join(
            json.dumps(
                {
                    "prompt": q.prompt,
                    "scores": q.scores,
                    "tokens": {m: {"input": 10, "output": 5} for m in q.scores},
                }
            )
            for q in toy(300, 5)
        )
    )
    base = [
        sys.executable,
        "-m",
        "tokenomy_cli.main",
        "eval",
        "routing",
        "--data",
        str(data),
        "--format",
        "jsonl",
        "--weak",
        "weak",
        "--strong",
        "strong",
    ]
    ok = subprocess.run(
        [*base, "--price", "weak=0.1/0.1", "--price", "strong=10/30"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "| complexity router |" in ok.stdout
    assert "| perfect router |" in ok.stdout
    missing = subprocess.run(
        [*base, "--price", "weak=0.1/0.1"], capture_output=True, text=True, check=False
    )
    assert missing.returncode == 2
    assert "pass --price strong=IN/OUT" in missing.stderr
    bad = subprocess.run(
        [*base, "--price", "weak=cheap"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2
    assert "is not MODEL=INPUT/OUTPUT" in bad.stderr


def with_answers(n: int, seed: int) -> list[Query]:
    """Weak answers that show their work: wrong ones have a wrong calculation."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        right = rng.random() < 0.6
        shown = a * b if right else a * b + rng.randint(1, 9)
        answer = f"{a} * {b} = {shown}\n#### {shown}"
        out.append(
            Query(
                f"What is {a} times {b}?",
                {"weak": 1.0 if right else 0.0, "strong": 1.0},
                tokens={"weak": (10, 8), "strong": (10, 8)},
                answers={"weak": answer},
            )
        )
    return out


def test_cascade_escalates_the_answers_the_scorer_doubts() -> None:
    prices = {"weak": price("0.1", "0.1"), "strong": price("10", "30")}
    # Enough to certify 95 % at 90 % confidence: 600 to fit, 600 to choose the cut on.
    result = evaluate_cascade(with_answers(1200, 1), with_answers(400, 2), "weak", "strong", prices)
    assert result.row.quality >= 0.95
    # Only wrong answers (about 40 %) need the strong model; a blind cascade would escalate all.
    assert result.row.strong_share < 0.5
    assert result.row.cost_reduction > 0.4
    assert set(result.reasons) == {"confident", "low_confidence"}


def sampled(n: int, seed: int) -> list[dict[str, Any]]:
    """Word problems with 7 weak samples each: easy ones mostly agree on the right answer,
    hard ones scatter; the strong model is always right."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        right = 0.95 if rng.random() < 0.6 else 0.3
        answers = [
            f"#### {a * b if rng.random() < right else a * b + rng.randint(1, 50)}"
            for _ in range(7)
        ]
        out.append({
            "prompt": f"What is {a} times {b}?",
            "scores": {"weak": float(answers[0] == f"#### {a * b}"), "strong": 1.0},
            "samples": {"weak": answers},
            "reference": str(a * b),
        })  # fmt: skip
    return out


def test_agreement_cascade_keeps_answers_the_samples_agree_on(tmp_path: Path) -> None:
    data = tmp_path / "sampled.jsonl"
    data.write_text("\n".join(json.dumps(q) for q in sampled(3_000, 5)))
    out = subprocess.run(
        [sys.executable, "-m", "tokenomy_cli.main", "eval", "cascade", "--data", str(data),
         "--format", "jsonl", "--weak", "weak", "--strong", "strong",
         "--price", "weak=0.1/0.1", "--price", "strong=10/30",
         "--method", "agreement", "--samples", "7", "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)["rows"][0]
    assert row["name"] == "cascade (agreement of 7 samples)"
    assert row["quality"] >= 0.95
    assert row["cost_reduction"] > 0.3  # most easy questions are kept on the weak model


def three_models(path: Path, n: int, seed: int) -> None:
    """A RouterBench-style CSV: easy prompts every model answers, medium ones the two larger,
    hard ones only the largest; costs 1 : 5 : 20."""
    rng = random.Random(seed)
    lines = ["prompt,s,m,l,s|total_cost,m|total_cost,l|total_cost"]
    for i in range(n):
        kind = rng.choice(["easy", "easy", "medium", "hard"])
        words = {"easy": "greeting hello", "medium": "sum of numbers", "hard": "integral proof"}
        right = {"easy": (1, 1, 1), "medium": (0, 1, 1), "hard": (0, 0, 1)}[kind]
        lines.append(f"{words[kind]} {i % 17},{right[0]},{right[1]},{right[2]},0.001,0.005,0.02")
    path.write_text("\n".join(lines) + "\n")


def test_routing_over_three_tiers_uses_the_middle_one_and_keeps_the_target(
    tmp_path: Path,
) -> None:
    data = tmp_path / "three.csv"
    three_models(data, 4_000, 3)
    out = subprocess.run(
        [sys.executable, "-m", "tokenomy_cli.main", "eval", "routing", "--data", str(data),
         "--format", "routerbench", "--tiers", "s,m,l", "--no-cost-aware", "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)["rows"]}
    router = rows["complexity router (3 tiers)"]
    assert router["quality"] >= 0.95
    assert router["cost_reduction"] > rows["random, calibrated the same way"]["cost_reduction"]
    # Easy ones on s and the rest on l would save 46 %: more needs the middle tier.
    assert router["cost_reduction"] > 0.55
    assert router["strong_share"] < 0.3  # only the hard quarter on l
    assert rows["all on l"]["cost_reduction"] == 0.0
    assert rows["perfect router"]["quality"] == 1.0


def test_eval_tiers_recommends_the_cheapest_route_that_keeps_the_target(tmp_path: Path) -> None:
    data = tmp_path / "three.csv"
    three_models(data, 4_000, 4)
    lines = data.read_text().splitlines()
    # x is always right but dearer than l; z is cheap and always wrong.
    more = [lines[0] + ",x,z,x|total_cost,z|total_cost"]
    more += [line + ",1,0,0.05,0.0005" for line in lines[1:]]
    data.write_text("\n".join(more) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "tokenomy_cli.main", "eval", "tiers", "--data", str(data),
         "--format", "routerbench", "--models", "s,m,l,x,z", "--no-cost-aware", "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["reference"] == "l"
    routes = [tuple(c["models"]) for c in found["candidates"]]
    assert routes[0] == ("s", "m", "l")
    assert all("x" not in r for r in routes)  # dearer than the reference: never a cheaper tier
    assert found["recommended"]["quality"] >= 0.95


def test_cascade_needs_recorded_answers() -> None:
    prices = {"weak": price("0.1", "0.1"), "strong": price("10", "30")}
    with pytest.raises(ValueError, match="no recorded answer of weak"):
        evaluate_cascade(toy(20, 1), toy(20, 2), "weak", "strong", prices)


def test_eval_routing_uses_the_sidecars_decision() -> None:
    train, test = toy(300, 6), toy(100, 7)
    prices = {"weak": price("0.1", "0.1"), "strong": price("10", "30")}
    pair = Pair("weak", "strong", prices["weak"], prices["strong"])
    model = fit_router(train, pair, 0.95)
    predictions = np.array([model.score(q.prompt) for q in test])
    scores = scores_for(model, pair, test, predictions, cost_aware=True)
    by_score = [bool(s >= model.cut) for s in scores]
    assert by_score == [decide(model, pair, q, cost_aware=True) for q in test]
    assert 0 < sum(by_score) < len(test)


def test_eval_cache_on_labelled_queries(tmp_path: Path) -> None:
    data = tmp_path / "intents.csv"
    rows = [
        ("How do I reset my card PIN?", "pin"),
        ("I forgot the PIN of my card, how can I reset it?", "pin"),
        ("Where is my new card? It has not arrived.", "delivery"),
        ("My card still has not been delivered", "delivery"),
    ]
    data.write_text("text,category\n" + "".join(f'"{t}",{c}\n' for t, c in rows))
    lookups = tmp_path / "lookups.csv"
    lookups.write_text(
        "text,category\nhow can I reset my PIN?,pin\nmy card has not arrived yet,delivery\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "tokenomy_cli.main", "eval", "cache",
         "--labelled", str(data), "--lookups", str(lookups)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "| 0.70 | 100.0% | 0.0% |" in out.stdout
    assert "Lowest threshold with wrong hits <= 2%: 0.500" in out.stdout


def test_plot_and_router_train_commands(tmp_path: Path) -> None:
    data = tmp_path / "toy.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"prompt": q.prompt, "scores": q.scores, "answers": q.answers})
            for q in with_answers(300, 8)
        )
    )
    common = ["--format", "jsonl", "--weak", "weak", "--strong", "strong",
              "--price", "weak=0.1/0.1", "--price", "strong=10/30"]  # fmt: skip
    cli = [sys.executable, "-m", "tokenomy_cli.main"]
    plot = tmp_path / "cascade.png"
    out = subprocess.run(
        [*cli, "eval", "cascade", "--data", str(data), *common, "--plot", str(plot)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "| cascade (weak answer judged) |" in out.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.stat().st_size > 10_000  # axes, five curves and a legend, not an empty canvas

    model = tmp_path / "router.npz"
    out = subprocess.run(
        [*cli, "router", "train", "--data", str(data), *common, "-o", str(model)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "complexity model from 300 outcomes" in out.stdout
    assert ComplexityModel.load(model).mean_input_tokens > 0
    hopeless = tmp_path / "hopeless.jsonl"  # the weak model is never right: nothing to save
    hopeless.write_text(
        "\n".join(
            json.dumps({"prompt": f"question {i}", "scores": {"weak": 0, "strong": 1}})
            for i in range(200)
        )
    )
    out = subprocess.run(
        [*cli, "router", "train", "--data", str(hopeless), *common, "-o", str(model)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "support no saving at 95% quality with 90% confidence" in out.stderr
    assert ComplexityModel.load(model).cut == float("-inf")
    scored = subprocess.run(
        [*cli, "eval", "routing", "--data", str(hopeless), *common, "--model", str(model),
         "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    rows = {r["name"]: r for r in json.loads(scored.stdout)["rows"]}
    assert rows["complexity router"]["strong_share"] == 1.0  # the saved cut, as it is
    scorer = tmp_path / "scorer.npz"
    out = subprocess.run(
        [*cli, "router", "train", "--scorer", "--data", str(data), *common, "-o", str(scorer)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert AnswerScorer.load(scorer).score("What is 2 times 3?", "2 * 3 = 6\n#### 6") > 0.5
    data.write_text(data.read_text().splitlines()[0] + "\n")
    few = subprocess.run(
        [*cli, "router", "train", "--data", str(data), *common, "-o", str(model)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert few.returncode == 2
    assert "1 outcomes are too few to train on" in few.stderr


def test_the_budget_run_serves_by_the_sidecars_cuts_and_holds_on_the_other_half() -> None:
    rng = np.random.default_rng(0)
    similarity = rng.uniform(0.5, 1.0, 20_000)
    correct = rng.uniform(0, 1, 20_000) > (1.0 - similarity) * 0.2  # wrong 10 % at 0.5, 0 at 1
    noise = rng.uniform(0, 1, 20_000)  # an agreement that says nothing
    run = cache.budget_splits(cache.Lookups(similarity, noise, correct), 0.02, splits=10, seed=1)
    assert run.held >= 0.9
    assert 0.25 < run.served < 0.4  # above 0.8 the true wrong share is 2 %
    assert run.by_similarity == pytest.approx(run.served, abs=0.05)
