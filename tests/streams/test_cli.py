"""``fluxscore produce`` and ``consume`` against the real broker; ``register`` wiring."""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson
import pytest
import typer
from typer.testing import CliRunner

from streams.cli import register
from streams.dlq import Source, build_dead_letter

pytestmark = pytest.mark.integration
_n = itertools.count()


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_register_adds_the_stream_commands() -> None:
    names = {c.name or c.callback.__name__ for c in _app().registered_commands if c.callback}
    assert names == {"worker", "produce", "consume", "demo"}


def test_produce_then_consume_as_json(broker, tmp_path: Path) -> None:
    prefix = f"cli{next(_n)}."
    env = {"FLUXSCORE_KAFKA_BOOTSTRAP": broker.bootstrap, "FLUXSCORE_TOPIC_PREFIX": prefix}
    lines = [orjson.dumps({"id": f"a{i}", "title": f"t{i}", "content": "c"}) for i in range(5)]
    lines.insert(2, b"not json at all")
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    runner = CliRunner()

    produced = runner.invoke(_app(), ["produce", str(path)], env=env)
    assert produced.exit_code == 0, produced.output
    assert f"published 6 messages to {prefix}articles.raw" in produced.output

    consumed = runner.invoke(_app(), ["consume", "articles.raw", "--json", "--limit", "6", "--idle-timeout", "10"],
                             env=env)
    assert consumed.exit_code == 0, consumed.output
    rows = [orjson.loads(line) for line in consumed.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 6
    assert {r["key"] for r in rows} == {f"a{i}" for i in range(5)} | {None}, "keyed by article id when it has one"
    assert {r["topic"] for r in rows} == {prefix + "articles.raw"}
    assert {"base64": "bm90IGpzb24gYXQgYWxs"} in [r["value"] for r in rows]


def test_consume_pretty_prints_dead_letters(broker, tmp_path: Path) -> None:
    prefix = f"cli{next(_n)}."
    env = {"FLUXSCORE_KAFKA_BOOTSTRAP": broker.bootstrap, "FLUXSCORE_TOPIC_PREFIX": prefix}
    letter = build_dead_letter(b"{oops", Source("articles.raw", 0, 7), "prefilter", ValueError("not JSON"))
    path = tmp_path / "dlq.jsonl"
    path.write_bytes(letter.value + b"\n")
    runner = CliRunner()
    assert runner.invoke(_app(), ["produce", str(path), "--topic", prefix + "articles.dlq"], env=env).exit_code == 0
    out = runner.invoke(_app(), ["consume", "articles.dlq", "--limit", "1", "--idle-timeout", "10"], env=env)
    assert out.exit_code == 0, out.output
    assert "DLQ" in out.stdout and "stage=prefilter" in out.stdout and "ValueError: not JSON" in out.stdout


def test_commands_say_what_to_set_without_a_cluster(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("{}\n")
    result = CliRunner().invoke(_app(), ["produce", str(path)], env={"FLUXSCORE_KAFKA_BOOTSTRAP": "",
                                                                       "KAFKA_BOOTSTRAP": ""})
    assert result.exit_code == 2 and "KAFKA_BOOTSTRAP" in result.output
