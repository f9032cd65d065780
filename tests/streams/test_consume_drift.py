"""``fluxscore consume monitor.drift`` / ``monitor.alerts``: a whole report, readable in a terminal."""

from __future__ import annotations

import asyncio

import orjson
from rich.console import Console

from streams.cli import _pretty
from tests.streams.test_monitor import Sent, _feed, _monitor, _records


def test_a_drift_report_and_its_alerts_print_whole() -> None:
    send = Sent()
    monitor = _monitor(send=send, reference_size=100, window=100, every=100)
    asyncio.run(_feed(monitor, _records(100, 5.0, seed=1) + _records(100, 5.0, seed=2, start=100,
                                                                      blocked_share=0.5)))
    [report] = send.on("monitor.drift")
    console = Console(width=100, record=True, color_system=None)
    console.print(_pretty({"topic": "monitor.drift", "partition": 0, "offset": 7, "value": report}), soft_wrap=True)
    text = console.export_text()
    assert len(text) > 1000, "not cut at 300 characters"
    assert "demo@1.0.0" in text and "window #1" in text and "ALERT" in text
    assert "pinned production window" in text and "prefilter_pass_rate" in text
    for column in report["columns"]:
        assert column in text
    assert orjson.dumps(report).decode()[:300] not in text, "not the raw JSON"

    [alert] = [a for a in send.on("monitor.alerts") if a["rule"] == "prefilter_pass_rate"]
    console = Console(width=300, record=True, color_system=None)
    console.print(_pretty({"topic": "monitor.alerts", "partition": 0, "offset": 1, "value": alert}), soft_wrap=True)
    line = console.export_text()
    assert line.count("\n") == 1 and "ALERT demo@1.0.0 window #1  prefilter_pass_rate (warning)" in line
