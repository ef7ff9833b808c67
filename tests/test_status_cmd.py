"""``tokenomy status`` (#21): every CostPolicy's status as one table."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from test_controller import counting
from tokenomy_api.usage_protocol import RequestUsage, SidecarMessage
from tokenomy_cli.main import main
from tokenomy_cli.status_cmd import render
from tokenomy_operator.spend.totals import Totals

from helpers import policy_doc

pytestmark = pytest.mark.unit


async def captured() -> dict[str, object]:
    """A CostPolicy as the operator writes it after some traffic and comparisons."""
    controller, writer, usage, _, _ = counting(
        policy_doc(budget={"amount": "100"}, shadow={"enabled": True})
    )
    await controller.sync()
    reports = [
        RequestUsage(Decimal("0.50"), Decimal("1.25"), route="chat", tier="small",
                     cache="miss", lever="routing").report(1),
        RequestUsage(Decimal(0), Decimal("2.00"), route="chat", tier="large",
                     cache="exact", lever="exact_cache").report(2),
        RequestUsage(Decimal("0.10"), route="chat", shadow="routing", verdict="agree").report(3),
    ]  # fmt: skip
    usage.handle(SidecarMessage(holder="ns/a#1", policy="ns/agent", reports=reports))
    await controller.sync()
    status = writer.statuses[("costpolicies", "ns", "agent")]
    return {"metadata": {"namespace": "ns", "name": "agent"}, "status": status}


async def test_the_table_shows_what_status_holds() -> None:
    text = render([await captured()])
    header, line, _, title, levers = text.splitlines()
    assert header.split()[:4] == ["NAMESPACE", "NAME", "READY", "SPEND"]
    cells = line.split()
    assert cells[:3] == ["ns", "agent", "True"]
    assert "$0.60" in cells  # the requests' and the comparison's spend, to the cent
    assert "100" in line  # budget with its unit
    assert "USD/month" in line
    assert "$3.25" in cells  # saved
    assert "50%" in cells  # hit rate
    assert "small 100%" in line
    assert "0/0" in cells  # sidecars acknowledged of matched
    assert "100.0%" in line  # quality: the one comparison agreed
    assert title == "Savings by lever (this period):"
    assert levers.strip() == "ns/agent: exact_cache $2.00, routing $1.25"


async def test_savings_by_lever_resume_after_a_restart() -> None:
    status = (await captured())["status"]
    assert isinstance(status, dict)
    assert Totals.restore(status).status()["usage"] == status["usage"]


def test_no_policies_and_bare_ones_read_plainly() -> None:
    assert render([]) == "No CostPolicies found."
    bare = render([{"metadata": {"namespace": "a", "name": "b"}}])
    assert bare.splitlines()[1].split()[:4] == ["a", "b", "Unknown", "-"]


async def test_the_command_reads_kubectl_output_from_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "policies.json"
    listing.write_text(json.dumps({"items": [await captured()]}))
    assert main(["status", "--from", str(listing)]) == 0
    assert "agent" in capsys.readouterr().out
    listing.write_text("[1, 2]")
    assert main(["status", "--from", str(listing)]) == 1
    assert "expected a JSON object" in capsys.readouterr().err
