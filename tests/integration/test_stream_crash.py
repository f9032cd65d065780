"""Failures mid-stream: a worker killed with SIGKILL (all roles in one process, then each role of a split
deployment in turn), Redis restarted, the broker frozen. Nothing lost, no key scored twice with different
results."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis

from streams.embedded import EmbeddedRedis
from tests.integration.conftest import (
    STREAM_FILTERS,
    Collected,
    WorkerProcess,
    collect,
    produce_lines,
    produce_lines_paced,
    stopped,
    synthetic_articles,
)

pytestmark = pytest.mark.integration

N = 200
# The split-role test: few articles, produced slowly enough that they are still arriving at the first kill,
# so every role has work in flight when it is killed (each kill and restart costs two group rebalances).
SPLIT_N = 120
SPLIT_RATE = 4.0  # articles/s
PAUSE_N = 100
# Production saw the broker stall for 90 s. 20 s is already several times every timeout these workers
# run with (session 3 s, rebalance 6 s, commit 0.5 s), so sessions expire and the group rejoins, without
# spending 1.5 min of CI per run. It stays under aiokafka's 40 s request timeout, though: set
# FLUXSCORE_TEST_BROKER_PAUSE_S=90 to replay the real case (fetches and heartbeats then time out too).
BROKER_PAUSE_S = float(os.environ.get("FLUXSCORE_TEST_BROKER_PAUSE_S", "20"))
SPLIT_ROLES = ("prefilter", "probe", "model")
CONSUMES = {"prefilter": "articles.raw", "probe": "articles.screened", "model": "articles.escalated"}


def _expected(lines: list[bytes]) -> set[tuple[str, str]]:
    return {(orjson.loads(v)["id"], f) for v in lines for f in STREAM_FILTERS}


def _stages(got: Collected) -> Counter[str]:
    return Counter(str(orjson.loads(values[0])["stage"]) for values in got.records.values())


def _at_least(records: int, *, stage2: bool = False) -> Callable[[Collected], bool]:
    """``collect``'s stop condition: ``records`` keys out, and with ``stage2`` one of them from the model."""
    return lambda c: len(c.records) >= records and (not stage2 or _stages(c)["stage2"] > 0)


def _start_split(stream_env, workers, env: dict[str, str]) -> dict[str, WorkerProcess]:
    """One worker process per pipeline role, each waited for until it serves its input topic."""
    started = {role: workers(env, role) for role in SPLIT_ROLES}
    for role, proc in started.items():
        proc.wait_for_partitions(stream_env.topic(CONSUMES[role]))
    return started


def _alive(procs: dict[str, WorkerProcess]) -> None:
    for role, proc in procs.items():
        assert proc.proc is not None and proc.proc.poll() is None, \
            f"the {role} worker exited ({proc.proc.returncode if proc.proc else None}):\n{proc.tail()}"


def _log_summary(procs: list[WorkerProcess]) -> Counter[str]:
    """What the workers logged at warning and above, plus their redeliveries: evidence of what a fault did."""
    return Counter(f"{'+'.join(p.roles)}: {line.get('msg')}" for p in procs for line in p.log_lines()
                   if line.get("level") in ("warning", "error", "critical")
                   or line.get("msg") == "records scored before (redelivery)")


def test_kill_9_mid_stream_then_restart(stream_env, workers, tmp_path: Path) -> None:
    # With the embedding cache on, the restarted worker reads redelivered articles' embeddings from Redis.
    env = stream_env.env(FLUXSCORE_EMBEDDING_CACHE_TTL="600")
    first = workers(env)
    lines = synthetic_articles(N, seed=21)
    expected = _expected(lines)
    produce_lines(stream_env, lines, tmp_path / "articles.jsonl")

    partial = collect(stream_env, lambda c: len(c.records) >= len(expected) // 4, timeout=180, settle=0)
    assert len(partial.records) < len(expected), "the worker finished before it could be killed"
    first.kill9()
    workers(env)

    got = collect(stream_env, lambda c: len(c.records) >= len(expected), timeout=240)
    assert got.dead == []
    assert got.pairs == expected, f"{len(expected - got.pairs)} pairs lost"
    assert got.different_values() == {}, "a key carries two different records"
    cached = redis.Redis.from_url(stream_env.redis).scan_iter(match=f"fluxscore-{stream_env.name}:emb:*", count=1000)
    assert next(cached, None) is not None, "the probe agent stored its embeddings in Redis"


def test_redis_restart_mid_stream(stream_env, workers, redis_server, tmp_path: Path) -> None:
    if not isinstance(redis_server, EmbeddedRedis):
        pytest.skip("needs the test session's own redis-server to restart it")
    # The embedding cache is on too: while Redis is down it must only cost encodings, never block or drop.
    workers(stream_env.env(FLUXSCORE_EMBEDDING_CACHE_TTL="600"))
    lines = synthetic_articles(N, seed=22)
    expected = _expected(lines)
    produce_lines(stream_env, lines, tmp_path / "articles.jsonl")

    partial = collect(stream_env, lambda c: len(c.records) >= len(expected) // 5, timeout=180, settle=0)
    assert len(partial.records) < len(expected), "the worker finished before Redis could be restarted"
    redis_server.restart(down_for=3.0)

    got = collect(stream_env, lambda c: len(c.records) >= len(expected), timeout=240)
    assert got.dead == []
    assert got.pairs == expected, f"{len(expected - got.pairs)} pairs lost"
    assert got.different_values() == {}


def test_split_roles_each_killed_mid_stream(stream_env, workers, tmp_path: Path) -> None:
    env = stream_env.env()
    procs = _start_split(stream_env, workers, env)
    lines = synthetic_articles(SPLIT_N, seed=23)
    expected = _expected(lines)
    producer = produce_lines_paced(stream_env, lines, tmp_path / "articles.jsonl", rate=SPLIT_RATE)

    # Kill each role once enough came out that it is busy, and before everything is scored; the model
    # only once escalations have come out of it, so it is killed with stage-2 work of its own.
    kills: dict[str, Counter[str]] = {}
    killed: list[WorkerProcess] = []
    for step, role in enumerate(SPLIT_ROLES, start=1):
        want, needs_stage2 = len(expected) * step // 6, role == "model"
        partial = collect(stream_env, _at_least(want, stage2=needs_stage2), timeout=180, settle=0)
        assert len(partial.records) >= want, f"only {len(partial.records)} records before the {role} kill"
        assert len(partial.records) < len(expected), f"everything was scored before the {role} worker was killed"
        if role == "prefilter":
            assert producer.thread.is_alive(), "articles stopped arriving before the prefilter worker was killed"
        procs[role].kill9()
        killed.append(procs[role])
        kills[role] = _stages(partial)
        procs[role] = workers(env, role)
        procs[role].wait_for_partitions(stream_env.topic(CONSUMES[role]))
    assert producer.join() == SPLIT_N

    got = collect(stream_env, lambda c: len(c.records) >= len(expected), timeout=240)
    assert got.dead == []
    assert got.pairs == expected, f"{len(expected - got.pairs)} pairs lost: {sorted(expected - got.pairs)[:5]}"
    assert got.different_values() == {}, "a key carries two different records"
    stages = _stages(got)
    assert kills["model"]["stage2"] > 0, "no escalation was scored before the model worker was killed"
    assert stages["stage2"] > kills["model"]["stage2"], "the restarted model worker had no escalations left"
    _alive(procs)
    print(f"kills at {dict(kills)}; final {dict(stages)}; "
          f"{sum(len(v) > 1 for v in got.records.values())} keys delivered more than once (same record); "
          f"logs: {dict(_log_summary([*killed, *procs.values()]))}")


def test_broker_frozen_mid_stream(stream_env, workers, broker, tmp_path: Path) -> None:
    procs = _start_split(stream_env, workers, stream_env.env())
    lines = synthetic_articles(PAUSE_N, seed=24)
    expected = _expected(lines)
    produce_lines(stream_env, lines, tmp_path / "articles.jsonl")

    partial = collect(stream_env, lambda c: len(c.records) >= len(expected) // 4, timeout=180, settle=0)
    assert len(partial.records) < len(expected), "everything was scored before the broker could be frozen"
    # EmbeddedBroker has no pause API: its Popen is the public ``proc`` field.
    with stopped(broker.proc):
        time.sleep(BROKER_PAUSE_S)
    assert broker.proc is not None and broker.proc.poll() is None
    _alive(procs)

    got = collect(stream_env, lambda c: len(c.records) >= len(expected), timeout=240)
    assert got.dead == []
    assert got.pairs == expected, f"{len(expected - got.pairs)} pairs lost: {sorted(expected - got.pairs)[:5]}"
    assert got.different_values() == {}, "a key carries two different records"
    assert _stages(got)["stage2"] > 0, "no escalation reached the model worker"
    _alive(procs)
    print(f"frozen {BROKER_PAUSE_S} s at {dict(_stages(partial))}; logs: {dict(_log_summary(list(procs.values())))}")
