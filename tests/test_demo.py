"""``tokenomy demo``: the report's arithmetic, and a short real run end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
from PIL import Image

from tokenomy_api.compiled import Price
from tokenomy_demo import html, report, scoring, shadow
from tokenomy_demo.cli import EXAMPLES, demo
from tokenomy_demo.run import Result
from tokenomy_demo.workload import Question, load, support_answer, workload

PRICE = Price(input=Decimal("2.50"), output=Decimal(10))
CARD = Question("Where is my card?", "support", intent="card_arrival")
SUM = Question("What is 2 + 3?", "math", answers=("2 + 3 = 6", "2 + 3 = 5"), correct=(False, True))


def result(
    q: Question, text: str, cache: str = "miss", reason: str = "", cost: str = "0"
) -> Result:
    return Result(q, "small", cache, reason, Decimal(cost), 0.1, text, 200)


@pytest.mark.parametrize(
    ("q", "text", "right"),
    [
        (CARD, support_answer("card_arrival"), True),
        (CARD, support_answer("card_delivery_estimate"), False),  # a semantic hit gone wrong
        (SUM, "2 + 3 = 5", True),
        (SUM, "2 + 3\n= 5", True),  # the same answer, reflowed
        (SUM, "2 + 3 = 6", False),  # the weak model's recorded (wrong) answer
        (SUM, "something else entirely", False),  # another question's answer
    ],
)
def test_correctness_comes_from_the_recorded_outcomes(q: Question, text: str, right: bool) -> None:
    assert scoring.correct(q, text) is right


@pytest.mark.parametrize(
    ("cache", "reason", "lever"),
    [
        ("exact", "", "exact cache"),
        ("semantic", "", "semantic cache"),
        ("miss", "cascade; cascade: small confident 0.91", "cascade"),
        ("miss", "domain support (example 0.71)", "routing"),
        ("miss", "complexity 0.10 < 0.15", "routing"),
        ("miss", "default", "trimming and caps"),
    ],
)
def test_levers(cache: str, reason: str, lever: str) -> None:
    assert report.lever(result(0, "", cache, reason)) == lever


def test_levers_add_up_to_the_saving() -> None:
    questions = [CARD, CARD, SUM, SUM]
    baseline = [scoring.cost_on_large(q, PRICE) for q in questions]
    results = [
        result(0, support_answer("card_arrival"), "exact"),
        result(1, support_answer("card_arrival"), reason="domain support (example 0.8)",
               cost="0.0000042"),
        result(2, "2 + 3 = 5", reason="cascade; cascade: small low_confidence 0.2 -> large",
               cost="0.0009"),  # escalated: dearer than large alone
        result(3, "2 + 3 = 5", reason="default", cost=str(baseline[3])),
    ]  # fmt: skip
    right = [scoring.correct(questions[r.index], r.text) for r in results]
    built = report.build(
        results, baseline, right, [True] * 4, [], ("small", "large"), "4 questions",
        month_factor=Decimal(1000),
    )  # fmt: skip
    assert built.with_tokenomy + sum(built.by_lever.values()) == built.without
    assert built.by_lever["cascade"] < 0  # overspend is shown, not hidden
    assert built.by_lever["exact cache"] == baseline[0]
    assert built.quality_retained == 1.0
    assert built.hit_rate == 0.25
    assert built.month == (built.without * 1000, built.with_tokenomy * 1000)
    assert "A month" in report.text(built)
    unknown = report.build(results, baseline, None, None, [], ("small", "large"), "x")
    assert "Quality         not measured" in report.text(unknown)
    assert "Cost against quality" not in html.page(unknown, "")


def test_the_shadow_estimate_is_set_beside_the_truth_of_every_eligible_answer() -> None:
    questions = [CARD, SUM, SUM, CARD, SUM]

    def at(i: int, text: str, tier: str = "small", cache: str = "miss") -> Result:
        return Result(i, tier, cache, "", Decimal("0.01"), 0.1, text, 200)

    results = [
        at(0, support_answer("card_delivery_estimate"), cache="semantic"),  # another intent's
        at(1, "2 + 3 = 6"),  # the weak answer: its final number disagrees
        at(2, "2 + 3 = 5", tier="large"),  # the reference tier: never compared
        at(3, support_answer("card_arrival"), cache="exact"),  # an exact hit: never compared
        at(4, "2 + 3 = 5"),  # the strong answer, from the small tier
    ]
    built = shadow.report(
        questions, results, {"agree": 1.0, "disagree": 1.0}, Decimal("0.02"), Decimal("0.05"), 0.9
    )
    assert built is not None
    assert built.eligible == 3
    assert built.true_agreement == pytest.approx(1 / 3)
    assert built.true_retained == pytest.approx(1 / 3)  # 1 right of 3 the large tier gets right
    assert (built.compared, built.estimate) == (2, 0.5)
    assert built.low < built.true_agreement < built.high
    assert built.holds
    assert built.share == pytest.approx(0.02 / 0.07)
    assert "inside the interval" in "\n".join(built.lines("large"))
    assert shadow.report(questions, results[2:4], {}, Decimal(0), Decimal(1), 0.9) is None


def test_workload_repeats_and_mixes() -> None:
    questions = workload(load(), 500, seed=3)
    texts = [q.text for q in questions]
    assert len(set(texts)) < len(texts) * 0.8  # words repeat
    intents = {q.intent for q in questions if q.kind == "support"}
    assert len(intents) > 30  # and paraphrases: many intents, several wordings each
    assert 0.2 < sum(q.kind == "math" for q in questions) / 500 < 0.4
    assert questions == workload(load(), 500, seed=3)


def test_short_demo_end_to_end(tmp_path: Path) -> None:
    built = demo(120, 1, EXAMPLES)
    assert built.requests == 120
    assert built.errors == 0
    # The identity the report promises: spend with = spend without - savings by lever.
    assert built.with_tokenomy == built.without - sum(built.by_lever.values())
    assert built.with_tokenomy < built.without
    assert built.by_lever["exact cache"] > 0
    assert built.by_lever["routing"] > 0
    assert built.requests_by_lever.get("cascade", 0) > 0
    assert 0.9 < built.quality_retained < 1.1
    assert sum(built.tier_shares.values()) == pytest.approx(1.0)
    # The agent's CRM calls went through the sidecar's MCP proxy: repeats of the read-only
    # lookup from cache, every open_ticket sent, results trimmed.
    tools = built.tools
    assert tools is not None
    assert tools.calls == 120 + 120 // 8
    assert tools.not_cacheable == 120 // 8
    assert 0 < tools.hits < tools.calls - tools.not_cacheable
    assert 0 < tools.tokens_with < tools.tokens_without / 4
    assert tools.with_tokenomy == tools.without - tools.cache_saved - tools.trim_saved
    assert "Agent tools" in report.text(built)
    page = tmp_path / "report.html"
    page.write_text(html.page(built, report.text(built)))
    screenshot(page, tmp_path / "report.png")


def screenshot(page: Path, png: Path) -> None:
    """Render the page in headless Chromium and check the charts were drawn."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
    subprocess.run(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1000,1400", f"--screenshot={png}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    with Image.open(png) as image:
        colours = Counter(image.convert("RGB").get_flattened_data())
    # Inline charts in the page's colours: the exact-cache bar is #1f6feb, large #cf222e.
    assert colours[(0x1F, 0x6F, 0xEB)] > 500
    assert colours[(0xCF, 0x22, 0x2E)] > 100


def test_demo_command_prints_the_report(tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    out = subprocess.run(
        [sys.executable, "-m", "tokenomy_cli.main", "demo", "--requests", "40", "--html", str(page)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Spend without" in out.stdout
    assert "Savings by lever" in out.stdout
    assert "40/40" in out.stderr  # progress was shown
    assert "<svg" in page.read_text()
    bad = subprocess.run(
        [sys.executable, "-m", "tokenomy_cli.main", "demo", "--examples", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "expected one CostPolicy and one ModelRoute" in bad.stderr


def test_simulate_replays_a_log_through_a_policy(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    questions = ["Where is my new card?", "How do I reset my PIN?", "Why was my transfer declined?"]
    lines = []
    for minute in range(30):
        q = questions[minute % 3]
        lines.append(
            {
                "timestamp": f"2026-11-02T09:{minute:02d}:00Z",
                "headers": {"x-tenant-id": "acme"},
                "request": {"model": "support-chat", "messages": [{"role": "user", "content": q}]},
                "response": {"choices": [{"message": {"role": "assistant", "content": f"A: {q}"}}]},
            }
        )
    log.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    page = tmp_path / "sim.html"
    cli = [sys.executable, "-m", "tokenomy_cli.main", "simulate", "-f", str(EXAMPLES)]
    out = subprocess.run(
        [*cli, "--log", str(log), "--html", str(page)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    figures = dict(
        line.split(None, 2)[1:] if line.startswith("Spend") else line.split(None, 1)
        for line in out.stdout.splitlines()
        if line.startswith(("Spend", "Saved"))
    )
    without = Decimal(figures["without"].split()[0].lstrip("$"))
    with_ = Decimal(figures["with"].split()[0].lstrip("$"))
    assert with_ < without  # three questions, asked ten times each by one tenant: cached
    assert "exact cache" in out.stdout
    assert "A month" in out.stdout  # 29 minutes of timestamps, projected
    assert "Quality         not measured" in out.stdout
    assert "Tokenomy simulation" in page.read_text()

    log.write_text('{"model": "support-chat"}\n')
    bad = subprocess.run(
        [*cli, "--log", str(log)], capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 2
    assert "log.jsonl:1: expected a chat request with `messages`" in bad.stderr
