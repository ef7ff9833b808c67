"""Evaluation data: one query a row, each model's score on it, and what each call costs.

Formats read: the documented JSONL (one object a line:
``{"prompt": str, "scores": {model: 0..1}, "costs": {model: usd}?,
"tokens": {model: {"input": int, "output": int}}?, "answers": {model: str}?,
"samples": {model: [str]}?, "sample_scores": {model: [0..1]}?, "reference": str?}``),
RouteLLM's response CSVs (MMLU folder of per-subject files, GSM8K with responses), and
RouterBench-style CSVs (``prompt``, one score column per model,
``<model>|model_response``, ``<model>|total_cost``).
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from tokenomy_sidecar.routing.decision import estimate_tokens

csv.field_size_limit(1 << 30)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Query:
    """One evaluation query."""

    prompt: str
    scores: dict[str, float]
    """Quality of each model's answer, 0..1 (1 = correct)."""
    costs: dict[str, Decimal] = field(default_factory=dict)
    """What each model's call cost, when the data says."""
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)
    """(input, output) tokens per model, when known, for pricing with a table."""
    answers: dict[str, str] = field(default_factory=dict)
    """Each model's answer, when recorded (what a cascade judges)."""
    samples: dict[str, list[str]] = field(default_factory=dict)
    """Several answers per model to the same prompt, when recorded (agreement cascades)."""
    sample_scores: dict[str, list[float]] = field(default_factory=dict)
    """The quality of each of those samples, 0..1, when recorded."""
    reference: str = ""
    """The reference answer, when recorded: a sample is right when its final answer
    matches this one's."""


def _bool(text: str) -> float:
    return 1.0 if text.strip().lower() in ("true", "1", "1.0") else 0.0


def _contaminated(folder: Path) -> set[str]:
    path = folder / "contaminated_prompts.jsonl"
    if not path.exists():
        return set()
    return {
        json.loads(line)["eval_prompt"] for line in path.read_text().splitlines() if line.strip()
    }


def _columns(file: Path, row: dict[str, str], needed: Iterable[str]) -> None:
    missing = [c for c in needed if c not in row]
    if missing:
        raise ValueError(
            f"{file}: no column {', '.join(map(repr, missing))} (has {', '.join(row)[:300]})"
        )


def _skipped(file: Path, skipped: int, total: int, what: str) -> None:
    if skipped:
        log.warning("%s: skipped %d of %d rows with %s", file, skipped, total, what)


def load_routellm(path: Path, weak: str, strong: str) -> list[Query]:
    """RouteLLM response CSVs (a file, or a folder of them); contaminated prompts dropped,
    rows with an empty score cell skipped (and counted)."""
    folder = path if path.is_dir() else path.parent
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    skip = _contaminated(folder)
    out = []
    for file in files:
        empty = rows = 0
        with file.open(newline="") as f:
            for row in csv.DictReader(f):
                rows += 1
                _columns(file, row, ("prompt", weak, strong))
                prompt = row["prompt"]
                if prompt in skip:
                    continue
                if not (row[weak] or "").strip() or not (row[strong] or "").strip():
                    empty += 1
                    continue
                tokens, answers = {}, {}
                for model in (weak, strong):
                    response = row.get(f"{model}_response")
                    output = estimate_tokens(response) if response else 1
                    tokens[model] = (estimate_tokens(prompt), output)
                    if response:
                        answers[model] = response
                scores = {weak: _bool(row[weak]), strong: _bool(row[strong])}
                out.append(Query(prompt, scores, tokens=tokens, answers=answers))
        _skipped(file, empty, rows, "an empty score cell")
    return out


def load_mtbench(folder: Path, models: Sequence[str]) -> list[Query]:
    """MT-Bench as RouteLLM keeps it: ``question.jsonl`` and GPT-4 judge scores (1-10, read
    as 0.1-1) per question, turn and model in ``judgements.jsonl``; one query per question
    and turn (the second turn's prompt holds the first), contaminated questions dropped,
    turns without a score for every model skipped."""
    questions = {
        q["question_id"]: q
        for q in map(json.loads, (folder / "question.jsonl").read_text().splitlines())
    }
    scores: dict[tuple[int, int], dict[str, float]] = {}
    for line in (folder / "judgements.jsonl").read_text().splitlines():
        item = json.loads(line)
        if item["model"] in models and float(item["score"]) >= 0:
            scores.setdefault((item["question_id"], item["turn"]), {})[item["model"]] = (
                float(item["score"]) / 10
            )
    skip = _contaminated(folder)
    out = []
    for (qid, turn), by_model in sorted(scores.items()):
        turns = questions[qid]["turns"][:turn]
        prompt = "\n\n".join(turns)
        if set(by_model) >= set(models) and not skip & set(turns):
            out.append(Query(prompt, by_model))
    _skipped(
        folder / "judgements.jsonl",
        len(scores) - len(out),
        len(scores),
        "no score for every model, or a contaminated question",
    )
    return out


def load_jsonl(path: Path) -> list[Query]:
    """The documented JSONL format."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        try:
            out.append(
                Query(
                    prompt=item["prompt"],
                    scores={m: float(s) for m, s in item["scores"].items()},
                    costs={m: Decimal(str(c)) for m, c in (item.get("costs") or {}).items()},
                    tokens={
                        m: (int(t["input"]), int(t["output"]))
                        for m, t in (item.get("tokens") or {}).items()
                    },
                    answers={m: str(a) for m, a in (item.get("answers") or {}).items()},
                    samples={
                        m: [str(a) for a in answers]
                        for m, answers in (item.get("samples") or {}).items()
                    },
                    sample_scores={
                        m: [float(v) for v in values]
                        for m, values in (item.get("sample_scores") or {}).items()
                    },
                    reference=str(item.get("reference") or ""),
                )
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"{path}:{number}: {error!r} (see tokenomy_eval.dataset for the format)"
            ) from None
    return out


def load_routerbench(path: Path, models: Sequence[str]) -> list[Query]:
    """RouterBench-style CSV: a score column per model and ``<model>|total_cost``; rows with
    an empty score cell are skipped (and counted), a cell that is not a number is an error
    naming its row and column."""
    out = []
    empty = rows = 0
    with path.open(newline="") as f:
        for number, row in enumerate(csv.DictReader(f), 2):  # line 1 is the header
            rows += 1
            _columns(path, row, ("prompt", *models))
            if any(not (row[m] or "").strip() for m in models):
                empty += 1
                continue
            try:
                scores = {m: float(row[m]) for m in models}
                costs = {
                    m: Decimal(row[f"{m}|total_cost"]) for m in models if row.get(f"{m}|total_cost")
                }
            except (ValueError, ArithmeticError):
                bad = next(
                    (c, row[c])
                    for c in [*models, *(f"{m}|total_cost" for m in models)]
                    if row.get(c) and not _number(row[c])
                )
                raise ValueError(
                    f"{path}:{number}: column {bad[0]!r}: {bad[1]!r} is not a number"
                ) from None
            answers = {
                m: row[f"{m}|model_response"] for m in models if row.get(f"{m}|model_response")
            }
            out.append(Query(row["prompt"], scores, costs=costs, answers=answers))
    _skipped(path, empty, rows, "an empty score cell")
    return out


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def split(
    queries: Iterable[Query], test_share: float = 0.5, seed: int = 0
) -> tuple[list[Query], list[Query]]:
    """A fixed-seed shuffle split: (train, test). Nothing is tuned on the test part."""
    items = list(queries)
    random.Random(seed).shuffle(items)
    cut = int(len(items) * (1 - test_share))
    return items[:cut], items[cut:]
