"""``fluxscore demo``: the sample articles through Kafka end to end, with a live view and a summary.

Without ``KAFKA_BOOTSTRAP`` / ``REDIS_URL`` it starts an embedded Tansu broker and redis-server on free
loopback ports (whichever is missing); with them it uses that cluster, under a topic prefix and
consumer group of its own so earlier runs do not count. Workers run as ``python -m streams worker``
child processes, stopped with SIGTERM at the end; the broker and Redis are stopped after them.

Beside the scorers it runs the active-learning loop: a ``selector`` and an ``oracle`` worker, the oracle
being the fake OpenAI-compatible API of :mod:`training.oracle.fake` on loopback (it scores by a hash of
the text: the loop is real, the labels are not), with a label store of its own in the run directory.
Once every article is scored, it waits until every queued item is labelled or rejected, and the summary
says how many were candidates, queued, labelled and rejected per filter.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from scoring.package import FilterConfig, resolve
from scoring.records import ScoreRecord
from scoring.summary import ScoreSummary
from streams.dlq import DeadLetterRecord
from streams.embedded import EmbeddedBroker, EmbeddedRedis
from streams.exceptions import StreamError
from streams.kafka import make_consumer, produce_file
from streams.selector import is_candidate
from streams.settings import StreamSettings
from streams.wire import record_key_of
from training.oracle.fake import OracleServer

SAMPLE = Path(__file__).resolve().parent.parent / "scoring" / "data" / "sample_articles.jsonl"
# Tansu specifics: one record per producer batch (its ListOffsets), and short group timeouts
# because a join there takes session_timeout / 2.
EMBEDDED_ENV = {"FLUXSCORE_PRODUCER_MAX_BATCH_BYTES": "1", "FLUXSCORE_SESSION_TIMEOUT": "3",
                "FLUXSCORE_HEARTBEAT_INTERVAL": "0.5", "FLUXSCORE_REBALANCE_TIMEOUT": "6"}
DEMO_ORACLE_KEY_ENV = "FLUXSCORE_DEMO_ORACLE_KEY"
# After scoring, how long the queue may stay unchanged before the demo stops waiting for candidates the
# selector skipped (near-duplicates, over the budget).
LOOP_QUIET_SECONDS = 10.0


@dataclass
class Loop:
    """The active-learning loop per filter: candidates among the records, items queued, how they ended."""

    candidates: dict[str, set[str]] = field(default_factory=dict)
    queued: dict[str, set[str]] = field(default_factory=dict)
    labelled: dict[str, set[str]] = field(default_factory=dict)
    rejected: dict[str, set[str]] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)
    tokens: int = 0

    def count(self, part: dict[str, set[str]]) -> int:
        return sum(len(v) for v in part.values())

    @property
    def pending(self) -> int:
        return sum(len(q - self.labelled.get(f, set()) - self.rejected.get(f, set())) for f, q in self.queued.items())

    @property
    def accounted(self) -> bool:
        """Every candidate is queued (the selector skipped none)."""
        return all(ids <= self.queued.get(f, set()) for f, ids in self.candidates.items())

    def line(self) -> str:
        return (f"active learning: {self.count(self.queued)} queued of {self.count(self.candidates)} candidates, "
                f"{self.count(self.labelled)} labelled, {self.count(self.rejected)} rejected")

    def table(self, filters: tuple[str, ...]) -> Table:
        table = Table(title="active learning: selector -> oracle -> label store")
        for column in ("filter", "candidates", "queued", "skipped", "labelled", "rejected"):
            table.add_column(column, justify="left" if column == "filter" else "right")
        for f in filters:
            candidates, queued = self.candidates.get(f, set()), self.queued.get(f, set())
            table.add_row(f, str(len(candidates)), str(len(queued)), str(len(candidates - queued)),
                          *(str(len(part.get(f, set()))) for part in (self.labelled, self.rejected)))
        return table


@dataclass
class Progressed:
    """Completion state: an article is done when every filter scored it, or it was dead-lettered."""

    filters: tuple[str, ...]
    ids: set[str]
    anonymous: int                      # lines without a usable id: they can only end in the DLQ
    summary: ScoreSummary = field(default_factory=ScoreSummary)
    scored: dict[str, set[str]] = field(default_factory=dict)
    dead_ids: set[str] = field(default_factory=set)
    dead_anonymous: int = 0
    dead_reasons: Counter[str] = field(default_factory=Counter)
    keys: set[bytes] = field(default_factory=set)
    first_at: float | None = None
    last_at: float | None = None
    configs: dict[str, FilterConfig] = field(default_factory=dict)
    loop: Loop = field(default_factory=Loop)

    def add_record(self, key: bytes, value: bytes) -> None:
        if key in self.keys:  # a redelivered record, re-emitted as stored
            return
        self.keys.add(key)
        record = ScoreRecord.from_json(value)
        self.summary.add(record)
        self.scored.setdefault(record.article_id, set()).add(record.filter.name)
        config = self.configs.get(record.filter.name)
        if config is not None and is_candidate(record, config):
            self.loop.candidates.setdefault(record.filter.name, set()).add(record.article_id)
        self._tick()

    def add_dead(self, letter: DeadLetterRecord) -> None:
        if letter.article_id and letter.article_id in self.ids:
            self.dead_ids.add(letter.article_id)
        else:
            self.dead_anonymous += 1
        self.dead_reasons[f"{letter.stage}: {letter.error_type.rsplit('.', 1)[-1]}"] += 1
        self._tick()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.first_at = self.first_at or now
        self.last_at = now

    @property
    def done_articles(self) -> int:
        complete = sum(1 for i, f in self.scored.items() if i not in self.dead_ids and len(f) >= len(self.filters))
        return complete + len(self.dead_ids) + min(self.dead_anonymous, self.anonymous)

    @property
    def total(self) -> int:
        return len(self.ids) + self.anonymous

    @property
    def dead(self) -> int:
        return len(self.dead_ids) + self.dead_anonymous


def _read_ids(path: Path) -> tuple[set[str], int]:
    ids: set[str] = set()
    anonymous = 0
    for raw in path.read_bytes().splitlines():
        if not raw.strip():
            continue
        try:
            body = orjson.loads(raw)
            article_id = body.get("id") if isinstance(body, dict) else None
        except orjson.JSONDecodeError:
            article_id = None
        if isinstance(article_id, str) and article_id.strip():
            ids.add(article_id)
        else:
            anonymous += 1
    return ids, anonymous


def _stage_table(state: Progressed, elapsed: float) -> Table:
    table = Table.grid(padding=(0, 2))
    stages: Counter[str] = Counter()
    tiers: Counter[str] = Counter()
    for (_, stage), n in state.summary.stages.items():
        stages[stage] += n
    for (_, tier), n in state.summary.tiers.items():
        tiers[tier] += n
    table.add_row("records", str(state.summary.records), "dead letters", str(state.dead))
    table.add_row("stages", ", ".join(f"{k} {v}" for k, v in sorted(stages.items())) or "-",
                  "tiers", ", ".join(f"{k} {v}" for k, v in sorted(tiers.items())) or "-")
    rate = state.done_articles / elapsed if elapsed > 0 else 0.0
    table.add_row("elapsed", f"{elapsed:.0f} s", "articles/s", f"{rate:.1f}")
    return table


async def _watch(bootstrap: str, scores: str, dlq: str, state: Progressed, deadline: float, console: Console,
                 workers: list[subprocess.Popen[bytes]], started: float) -> None:
    consumer = make_consumer(bootstrap, scores, dlq)
    await consumer.start()
    progress = Progress(TextColumn("[bold]scoring through Kafka"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)
    task = progress.add_task("articles", total=state.total)
    try:
        with Live(Group(progress, _stage_table(state, 0.0)), console=console, refresh_per_second=4,
                  transient=False) as live:
            while state.done_articles < state.total:
                if time.monotonic() > deadline:
                    raise StreamError(f"demo timed out with {state.done_articles}/{state.total} articles done")
                dead = [w for w in workers if w.poll() is not None]
                if dead:
                    raise StreamError(f"a worker exited early with code {dead[0].returncode}")
                batches = await consumer.getmany(timeout_ms=250, max_records=1000)
                for messages in batches.values():
                    for msg in messages:
                        if msg.topic == dlq:
                            state.add_dead(DeadLetterRecord.parse(msg.value, list(msg.headers or [])))
                        elif msg.value is not None and (key := record_key_of(msg.key, msg.headers)):
                            state.add_record(key, msg.value)
                progress.update(task, completed=state.done_articles)
                live.update(Group(progress, _stage_table(state, time.perf_counter() - started)))
        console.print()
    finally:
        await consumer.stop()


async def _watch_loop(bootstrap: str, queues: dict[str, str], labels: dict[str, str], loop: Loop, deadline: float,
                      console: Console, workers: list[subprocess.Popen[bytes]]) -> None:
    """Follow the queue and label topics until every queued item ended (labelled or rejected)."""
    consumer = make_consumer(bootstrap, *queues, *labels)
    await consumer.start()
    changed = time.monotonic()
    try:
        with console.status(loop.line()) as status:
            while loop.pending or not (loop.accounted or time.monotonic() - changed > LOOP_QUIET_SECONDS):
                if time.monotonic() > deadline:
                    raise StreamError(f"demo timed out waiting for labels ({loop.line()})")
                dead = [w for w in workers if w.poll() is not None]
                if dead:
                    raise StreamError(f"a worker exited early with code {dead[0].returncode}")
                for messages in (await consumer.getmany(timeout_ms=250, max_records=1000)).values():
                    for msg in messages:
                        if msg.value is None:
                            continue
                        body = orjson.loads(msg.value)
                        if msg.topic in queues:
                            loop.queued.setdefault(queues[msg.topic], set()).add(body["article_id"])
                            changed = time.monotonic()
                            continue
                        name = labels[msg.topic]
                        if dict(msg.headers or []).get("fluxscore.label_status") == b"rejected":
                            loop.rejected.setdefault(name, set()).add(body["article_id"])
                            loop.reasons[str(body.get("reason", ""))[:80]] += 1
                        else:
                            loop.labelled.setdefault(name, set()).add(body["article_id"])
                        loop.tokens += int(body.get("tokens") or 0)
                status.update(loop.line())
    finally:
        await consumer.stop()


def _stop_workers(procs: list[subprocess.Popen[bytes]], timeout: float = 20.0) -> list[int]:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait(5))
    return codes


def run_demo(*, articles: Path | None, workers: int, timeout: float, console: Console) -> int:
    path = articles or SAMPLE
    if not path.is_file():
        console.print(f"[red]no articles at {path}[/] (pass --articles FILE.jsonl)")
        return 2
    settings = StreamSettings.from_env()
    try:
        packages = [resolve(ref) for ref in settings.filters]
        filters = tuple(p.name for p in packages)
    except Exception as exc:
        console.print(f"[red]cannot resolve the filters {', '.join(settings.filters)}: {exc}[/]")
        return 2
    ids, anonymous = _read_ids(path)
    run_id = f"demo-{int(time.time())}-{os.getpid()}"
    run_dir = Path(tempfile.mkdtemp(prefix="fluxscore-demo-"))
    broker = EmbeddedBroker(log_path=run_dir / "tansu.log") if not settings.kafka_bootstrap else None
    redis = EmbeddedRedis(directory=run_dir / "redis") if not settings.redis_url else None
    procs: list[subprocess.Popen[bytes]] = []
    oracle = OracleServer(secrets.token_urlsafe(16), dimensions_from_prompt=True)
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    code = 0
    try:
        with console.status("starting the broker and Redis"):
            if broker is not None:
                broker.start()
            if redis is not None:
                (run_dir / "redis").mkdir(exist_ok=True)
                redis.start()
            oracle.start()
        bootstrap = settings.kafka_bootstrap or (broker.bootstrap if broker else "")
        redis_url = settings.redis_url or (redis.url if redis else "")
        prefix = settings.topic_prefix or f"{run_id}."
        console.print(f"broker [bold]{bootstrap}[/] ({'embedded Tansu' if broker else 'external'}), "
                      f"Redis [bold]{redis_url}[/] ({'embedded' if redis else 'external'}), "
                      f"topics [bold]{prefix}*[/], filters {', '.join(filters)}, {workers} worker(s)")
        env = {**os.environ, **(EMBEDDED_ENV if broker else {}),
               "FLUXSCORE_KAFKA_BOOTSTRAP": bootstrap, "FLUXSCORE_REDIS_URL": redis_url,
               "FLUXSCORE_TOPIC_PREFIX": prefix, "FLUXSCORE_APP_ID": settings.app_id + "-" + run_id,
               "FLUXSCORE_REDIS_PREFIX": f"{settings.redis_prefix}-{run_id}",
               "FLUXSCORE_METRICS_PORT": os.environ.get("FLUXSCORE_METRICS_PORT", "0"),
               "FLUXSCORE_LOG_FORMAT": "json", "FLUXSCORE_RELOAD_INTERVAL": "0",
               "TOKENIZERS_PARALLELISM": "false"}
        for i in range(workers):
            log = (run_dir / f"worker-{i}.log").open("wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "streams", "worker", "--role", "all"], env=env,
                                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        # The loop always talks to the fake oracle and a label store of this run: a demo must neither spend
        # money on a real API nor put made-up labels into a real store.
        loop_env = {**env, "FLUXSCORE_METRICS_PORT": "0", "FLUXSCORE_LABELS_DB": str(run_dir / "labels.db"),
                    "FLUXSCORE_ORACLE_PROVIDER": "openai", "FLUXSCORE_ORACLE_BASE_URL": oracle.url + "/v1",
                    "FLUXSCORE_ORACLE_MODEL": "fake-oracle", "FLUXSCORE_ORACLE_API_KEY_ENV": DEMO_ORACLE_KEY_ENV,
                    DEMO_ORACLE_KEY_ENV: oracle.api_key, "FLUXSCORE_ORACLE_RPM": "0"}
        for role in ("selector", "oracle"):
            log = (run_dir / f"{role}.log").open("wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "streams", "worker", "--role", role], env=loop_env,
                                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))

        raw_topic = prefix + settings.topic_raw
        batch_bytes = int(env.get("FLUXSCORE_PRODUCER_MAX_BATCH_BYTES", "16384"))
        published = asyncio.run(produce_file(path, bootstrap, raw_topic, partitions=settings.partitions["raw"],
                                             replication=settings.replication, max_batch_bytes=batch_bytes))
        console.print(f"published {published} articles from {path.name} to {raw_topic}; workers are loading models")
        state = Progressed(filters=filters, ids=ids, anonymous=anonymous, configs={p.name: p.config for p in packages})
        state.summary.read = published
        asyncio.run(_watch(bootstrap, f"{prefix}{settings.topic_scores}.all", prefix + settings.topic_dlq, state,
                           deadline, console, procs, started))
        state.summary.rejected = state.dead
        state.summary.seconds = (state.last_at or time.perf_counter()) - started
        table = state.summary.table(title="fluxscore demo: scored through Kafka")
        first = (state.first_at or started) - started
        busy = (state.last_at or started) - (state.first_at or started)
        table.caption = (f"{published} articles, {state.summary.records} records, {state.dead} dead letters; "
                         f"{time.perf_counter() - started:.1f} s in all (first record after {first:.1f} s: "
                         f"model loading and group join), "
                         f"{state.done_articles / busy if busy > 0 else 0.0:.1f} articles/s once flowing")
        console.print(table)
        if state.dead_reasons:
            console.print("dead letters: " + ", ".join(f"{k} x{v}" for k, v in state.dead_reasons.items()))
        loop = state.loop
        asyncio.run(_watch_loop(bootstrap, {f"{prefix}{settings.topic_active_learning}.{f}": f for f in filters},
                                {f"{prefix}{settings.topic_labels}.{f}": f for f in filters}, loop, deadline, console,
                                procs))
        loop_table = loop.table(filters)
        loop_table.caption = (f"skipped: near-duplicates of queued items, or over the daily budget; labelled by the "
                              f"fake oracle at {oracle.url} ({loop.tokens} tokens); labels in "
                              f"{run_dir / 'labels.db'}")
        console.print(loop_table)
        if loop.reasons:
            console.print("rejected: " + ", ".join(f"{k} x{v}" for k, v in loop.reasons.items()))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; shutting down[/]")
        code = 130
    except StreamError as exc:
        console.print(f"[red]demo failed:[/] {exc}  (worker logs in {run_dir})")
        code = 1
    finally:
        with console.status("stopping workers, broker and Redis"):
            codes = _stop_workers(procs)
            if redis is not None:
                redis.cleanup()
            if broker is not None:
                broker.stop()
            oracle.stop()
        if any(c not in (0, -signal.SIGTERM) for c in codes):
            console.print(f"[yellow]worker exit codes {codes}; logs in {run_dir}[/]")
            code = code or 1
    console.print(f"done in {time.perf_counter() - started:.1f} s; logs in {run_dir}")
    return code
