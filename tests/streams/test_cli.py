"""``fluxscore produce`` and ``consume`` against the real broker (and against none); ``register`` wiring."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import typer
from typer.testing import CliRunner

from streams.cli import register
from streams.dlq import Source, build_dead_letter
from streams.kafka import make_consumer, similar_topics

pytestmark = pytest.mark.integration
_n = itertools.count()
REPO = Path(__file__).resolve().parents[2]


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _env(bootstrap: str, prefix: str, **extra: str) -> dict[str, str]:
    return {"FLUXSCORE_KAFKA_BOOTSTRAP": bootstrap, "FLUXSCORE_TOPIC_PREFIX": prefix,
            "FLUXSCORE_CONNECT_TIMEOUT": "10", **extra}


def _read_all(bootstrap: str, topic: str, count: int, timeout: float = 20.0) -> list[tuple[int, bytes, bytes | None]]:
    """(partition, value, key) of the first ``count`` messages of ``topic``."""
    async def run() -> list[tuple[int, bytes, bytes | None]]:
        consumer = make_consumer(bootstrap, topic)
        await consumer.start()
        got: list[tuple[int, bytes, bytes | None]] = []
        deadline = time.monotonic() + timeout
        try:
            while len(got) < count and time.monotonic() < deadline:
                for part in (await consumer.getmany(timeout_ms=500)).values():
                    got += [(m.partition, m.value, m.key) for m in part]
        finally:
            await consumer.stop()
        return got

    return asyncio.run(run())


def test_register_adds_the_stream_commands() -> None:
    names = {c.name or c.callback.__name__ for c in _app().registered_commands if c.callback}
    assert {"worker", "produce", "consume", "demo"} <= names


def test_produce_then_consume_as_json(broker, tmp_path: Path) -> None:
    prefix = f"cli{next(_n)}."
    env = _env(broker.bootstrap, prefix)
    lines = [orjson.dumps({"id": f"a{i}", "title": f"t{i}", "content": "c"}) for i in range(5)]
    lines.insert(2, b"not json at all")
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    runner = CliRunner()

    # --no-validate: every line that fits in a message goes out as it is (what the DLQ tests need).
    produced = runner.invoke(_app(), ["produce", str(path), "--no-validate"], env=env)
    assert produced.exit_code == 0, produced.output
    assert f"published 6 messages to {prefix}articles.raw" in produced.output
    assert "rejected 0 lines" in produced.output

    consumed = runner.invoke(_app(), ["consume", "articles.raw", "--json", "--limit", "6", "--idle-timeout", "10"],
                             env=env)
    assert consumed.exit_code == 0, consumed.output
    rows = [orjson.loads(line) for line in consumed.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 6
    assert {r["key"] for r in rows} == {f"a{i}" for i in range(5)} | {None}, "keyed by article id when it has one"
    assert {r["topic"] for r in rows} == {prefix + "articles.raw"}
    assert {"base64": "bm90IGpzb24gYXQgYWxs"} in [r["value"] for r in rows]


def test_produce_reports_and_counts_rejected_lines_and_publishes_the_rest(broker, tmp_path: Path) -> None:
    prefix = f"cli{next(_n)}."
    # The limits the workers apply, from the same variables; small so the test stays small.
    env = _env(broker.bootstrap, prefix, FLUXSCORE_MAX_CONTENT_BYTES="2000")
    # Odd spacing and key order: the published bytes must be the line's, not a re-serialisation.
    valid = [b'{"title": "t%d",   "id": "v%d", "content": "c"}' % (i, i) for i in range(3)]
    lines = [valid[0], b"not json at all", valid[1], orjson.dumps({"id": "big", "content": "x" * 3000}), b"",
             b"[1, 2]", valid[2]]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    result = CliRunner().invoke(_app(), ["produce", str(path)], env=env)
    assert result.exit_code == 1, result.output
    out = result.output
    assert "line 2 not published: record is not valid JSON" in out
    assert "line 4 not published:" in out and "above the limit of 2000" in out
    assert "line 6 not published: record must be a JSON object" in out
    assert f"published 3 messages to {prefix}articles.raw" in out and "rejected 3 lines" in out
    assert "Traceback" not in out
    got = _read_all(broker.bootstrap, prefix + "articles.raw", 3)
    assert sorted(value for _, value, _ in got) == sorted(valid), "valid lines published byte for byte"
    assert {key for _, _, key in got} == {b"v0", b"v1", b"v2"}


def test_produce_rejects_a_line_larger_than_a_message_and_publishes_the_rest(broker, tmp_path: Path) -> None:
    prefix = f"cli{next(_n)}."
    env = _env(broker.bootstrap, prefix, FLUXSCORE_MAX_MESSAGE_BYTES="16384")
    lines = [orjson.dumps({"id": "a", "content": "c"}), orjson.dumps({"id": "huge", "content": "x" * 20_000}),
             orjson.dumps({"id": "b", "content": "c"})]
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    result = CliRunner().invoke(_app(), ["produce", str(path), "--no-validate"], env=env)
    assert result.exit_code == 1, result.output
    assert "line 2 not published:" in result.output and "FLUXSCORE_MAX_MESSAGE_BYTES" in result.output
    assert "published 2 messages" in result.output and "rejected 1 line" in result.output
    assert "Traceback" not in result.output
    assert sorted(key for _, _, key in _read_all(broker.bootstrap, prefix + "articles.raw", 2)) == [b"a", b"b"]


def test_consume_limit_counts_messages_of_every_partition_together(broker, tmp_path: Path) -> None:
    prefix = f"cli{next(_n)}."
    env = _env(broker.bootstrap, prefix)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"id": f"k{i}", "content": "c"}) + b"\n" for i in range(16)))
    runner = CliRunner()
    assert runner.invoke(_app(), ["produce", str(path)], env=env).exit_code == 0
    partitions = {p for p, _, _ in _read_all(broker.bootstrap, prefix + "articles.raw", 16)}
    assert len(partitions) > 1, "the messages are spread over several partitions"

    for limit in (2, 5):
        consumed = runner.invoke(_app(), ["consume", "articles.raw", "--json", "--limit", str(limit),
                                          "--idle-timeout", "10"], env=env)
        assert consumed.exit_code == 0, consumed.output
        assert len([line for line in consumed.stdout.splitlines() if line.startswith("{")]) == limit


def test_consume_says_a_topic_does_not_exist_and_names_similar_ones(broker, tmp_path: Path) -> None:
    prefix = f"cli{next(_n)}."
    env = _env(broker.bootstrap, prefix)
    path = tmp_path / "in.jsonl"
    path.write_bytes(orjson.dumps({"id": "a", "content": "c"}) + b"\n")
    runner = CliRunner()
    assert runner.invoke(_app(), ["produce", str(path)], env=env).exit_code == 0

    started = time.monotonic()
    # --idle-timeout only bounds the test: without the check the command waited for the topic in silence.
    result = runner.invoke(_app(), ["consume", "articles.rwa", "--idle-timeout", "20"], env=env)
    assert time.monotonic() - started < 15
    assert result.exit_code == 1, result.output
    assert f"topic {prefix}articles.rwa does not exist on {broker.bootstrap}" in result.output
    assert f"similar name: {prefix}articles.raw" in result.output
    assert "FLUXSCORE_TOPIC_PREFIX" in result.output


def test_similar_topics_share_the_prefix_or_the_spelling() -> None:
    existing = {"p.articles.raw", "p.articles.dlq", "p.scores.all", "other.thing", "__consumer_offsets"}
    assert similar_topics("p.articles.rwa", existing) == ["p.articles.dlq", "p.articles.raw"]
    assert similar_topics("p.scores.al", existing) == ["p.scores.all"]
    assert similar_topics("nothing.like.it", existing) == []


def test_consume_pretty_prints_dead_letters_with_their_bracketed_context(broker, tmp_path: Path) -> None:
    prefix = f"cli{next(_n)}."
    env = _env(broker.bootstrap, prefix)
    error = ValueError("not JSON [filter=demo, path=/x/y]")
    letter = build_dead_letter(b"{oops", Source("articles.raw", 0, 7), "prefilter", error)
    path = tmp_path / "dlq.jsonl"
    path.write_bytes(letter.value + b"\n")
    runner = CliRunner()
    produced = runner.invoke(_app(), ["produce", str(path), "--topic", prefix + "articles.dlq", "--no-validate"],
                             env=env)
    assert produced.exit_code == 0, produced.output
    out = runner.invoke(_app(), ["consume", "articles.dlq", "--limit", "1", "--idle-timeout", "10"], env=env)
    assert out.exit_code == 0, out.output
    assert "DLQ" in out.stdout and "stage=prefilter" in out.stdout
    # Rich would read "[filter=…]" as a markup tag and drop it.
    assert "ValueError: not JSON [filter=demo, path=/x/y]" in out.stdout
    assert re.search(rf"{re.escape(prefix)}articles\.dlq\[\d\]@0 ", out.stdout), "topic[partition]@offset"


def test_commands_say_what_to_set_without_a_cluster(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("{}\n")
    result = CliRunner().invoke(_app(), ["produce", str(path)], env={"FLUXSCORE_KAFKA_BOOTSTRAP": "",
                                                                       "KAFKA_BOOTSTRAP": ""})
    assert result.exit_code == 2 and "KAFKA_BOOTSTRAP" in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", ["produce", "consume"])
def test_an_unreachable_broker_is_named_after_the_connect_timeout(command: str, tmp_path: Path) -> None:
    # The real command line (logging configured as `fluxscore` does): aiokafka's own ERROR lines, one per
    # attempt, must not reach the terminal, and no traceback either.
    path = tmp_path / "x.jsonl"
    path.write_bytes(orjson.dumps({"id": "a", "content": "c"}) + b"\n")
    bootstrap = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSCORE_") and k != "KAFKA_BOOTSTRAP"}
    env |= {"KAFKA_BOOTSTRAP": bootstrap, "FLUXSCORE_CONNECT_TIMEOUT": "1.5"}
    args = [str(path)] if command == "produce" else ["scores.all"]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "scoring.entry", command, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    seconds = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    assert f"cannot reach the Kafka broker at {bootstrap} within 1.5 s" in done.stderr
    assert "FLUXSCORE_CONNECT_TIMEOUT" in done.stderr
    assert "Traceback" not in done.stderr and "ERROR" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert seconds < 20, "bounded by the setting (plus the interpreter's start)"


def test_connect_timeout_is_a_setting() -> None:
    from streams.settings import StreamSettings

    assert StreamSettings.from_env({}).connect_timeout == 10.0
    assert StreamSettings.from_env({"FLUXSCORE_CONNECT_TIMEOUT": "2.5"}).connect_timeout == 2.5


@pytest.mark.parametrize("command", ["produce", "consume"])
def test_help_documents_the_exit_codes_whole_at_80_columns(command: str) -> None:
    result = CliRunner().invoke(_app(), [command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert "Exit codes:" in result.output and "3  the broker could not be reached" in result.output
    assert "…" not in result.output
