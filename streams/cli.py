"""``fluxscore worker``, ``produce``, ``consume`` and ``demo``; :func:`register` adds them to the top-level app."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from scoring.exceptions import FluxscoreError
from streams.exceptions import StreamError
from streams.settings import StreamSettings

console = Console(stderr=True)

ROLE_HELP = ("prefilter, probe, model (any of them; comma-separated or repeated), all (those three), "
             "or shadow / monitor (each alone)")


def worker(
    role: Annotated[list[str] | None, typer.Option("--role", "-r", help=ROLE_HELP)] = None,
    filters: Annotated[str | None, typer.Option(help="filter refs, comma-separated (default FLUXSCORE_FILTERS)")]
    = None,
) -> None:
    """Run a stream worker (Faust) with the given roles until SIGTERM/SIGINT."""
    from streams.worker import run_worker

    env = dict(os.environ)
    if filters:
        env["FLUXSCORE_FILTERS"] = filters
    try:
        settings = StreamSettings.from_env(env)
        if role:
            settings = settings.with_roles(role)
    except StreamError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    try:
        code = run_worker(settings)
    except FluxscoreError as exc:
        # Startup problems (no such filter, broker unreachable): one clear line, not a traceback.
        logging.getLogger("fluxscore.streams.worker").critical("worker cannot start", extra={
            "error_type": type(exc).__name__, "error": str(exc)})
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def produce(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL, one article per line")],
    topic: Annotated[str | None, typer.Option(help="target topic (default: the raw articles topic)")] = None,
    rate: Annotated[float, typer.Option(help="messages per second; 0 = as fast as possible")] = 0.0,
    limit: Annotated[int | None, typer.Option(help="stop after this many messages")] = None,
) -> None:
    """Publish a JSONL file of articles to Kafka, one message per line, keyed by article id."""
    from streams.kafka import produce_file
    from streams.topics import Topics

    settings = StreamSettings.from_env()
    if not settings.kafka_bootstrap:
        console.print("[red]error:[/] set FLUXSCORE_KAFKA_BOOTSTRAP (or KAFKA_BOOTSTRAP)")
        raise typer.Exit(2)
    topics = Topics.from_settings(settings)
    name = topic or topics.raw.name
    started = time.perf_counter()
    count = asyncio.run(produce_file(file, settings.kafka_bootstrap, name, partitions=topics.raw.partitions,
                                     replication=settings.replication, rate=rate, limit=limit,
                                     max_batch_bytes=settings.producer_max_batch_bytes))
    seconds = time.perf_counter() - started
    console.print(f"published {count} messages to {name} in {seconds:.1f} s")


def _decode_value(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return {"base64": base64.b64encode(value).decode()}


def _message_json(msg: Any) -> dict[str, Any]:
    return {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset,
            "key": msg.key.decode("utf-8", "replace") if msg.key is not None else None,
            "headers": {k: v.decode("utf-8", "replace") for k, v in (msg.headers or [])},
            "value": _decode_value(msg.value)}


def _pretty(body: dict[str, Any]) -> str:
    value = body["value"]
    where = f"[dim]{body['topic']}[{body['partition']}]@{body['offset']}[/]"
    if isinstance(value, dict) and "tier" in value and "filter" in value:
        tier = value["tier"]
        color = {"HIGH": "green", "MEDIUM": "yellow", "LOW": "white"}.get(tier, "white")
        return (f"{where} {value['article_id']}  {value['filter']['name']}@{value['filter']['version']}  "
                f"[{color}]{tier:<6}[/] {value['weighted_average']:5.2f}  via {value['stage']}")
    if isinstance(value, dict) and "error" in value and "stage" in value:
        return (f"{where} [red]DLQ[/] {value.get('article_id') or '-'}  stage={value['stage']}  "
                f"{value['error']['type'].rsplit('.', 1)[-1]}: {value['error']['message']}")
    return f"{where} {orjson.dumps(value).decode()[:300]}"


async def tail(bootstrap: str, topic: str, *, as_json: bool, from_beginning: bool, limit: int | None,
               idle_timeout: float | None) -> int:
    from streams.kafka import make_consumer

    consumer = make_consumer(bootstrap, topic, from_beginning=from_beginning)
    await consumer.start()
    out = Console(highlight=False, soft_wrap=True)
    seen = 0
    try:
        last = time.monotonic()
        while limit is None or seen < limit:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            if not batches:
                if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    break
                continue
            last = time.monotonic()
            for messages in batches.values():
                for msg in messages:
                    body = _message_json(msg)
                    if as_json:
                        sys.stdout.write(orjson.dumps(body).decode() + "\n")
                    else:
                        out.print(_pretty(body))
                    seen += 1
                    if limit is not None and seen >= limit:
                        break
            sys.stdout.flush()
    finally:
        await consumer.stop()
    return seen


def consume(
    topic: Annotated[str, typer.Argument(help="topic name, e.g. scores.all (FLUXSCORE_TOPIC_PREFIX is added)")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line instead of pretty output")] = False,
    from_beginning: Annotated[bool, typer.Option("--from-beginning/--latest")] = True,
    limit: Annotated[int | None, typer.Option(help="exit after this many messages")] = None,
    idle_timeout: Annotated[float | None, typer.Option(help="exit after this many seconds without a message")]
    = None,
) -> None:
    """Tail a topic: scores pretty-printed, dead letters with their reason, or raw JSON lines."""
    settings = StreamSettings.from_env()
    if not settings.kafka_bootstrap:
        console.print("[red]error:[/] set FLUXSCORE_KAFKA_BOOTSTRAP (or KAFKA_BOOTSTRAP)")
        raise typer.Exit(2)
    name = topic if topic.startswith(settings.topic_prefix) else settings.topic_prefix + topic
    try:
        asyncio.run(tail(settings.kafka_bootstrap, name, as_json=as_json, from_beginning=from_beginning,
                         limit=limit, idle_timeout=idle_timeout))
    except KeyboardInterrupt:
        pass


def demo(
    articles: Annotated[Path | None, typer.Option(help="JSONL of articles (default: the bundled sample)")] = None,
    workers: Annotated[int, typer.Option(help="worker processes (each runs every role)")] = 1,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 170.0,
) -> None:
    """Score the sample articles through Kafka end to end, with an embedded broker and Redis if none is set."""
    from streams.demo import run_demo

    raise typer.Exit(run_demo(articles=articles, workers=workers, timeout=timeout, console=console))


def register(app: typer.Typer) -> None:
    """Add the stream commands to the top-level ``fluxscore`` app."""
    app.command("worker")(worker)
    app.command("produce")(produce)
    app.command("consume")(consume)
    app.command("demo")(demo)


def main() -> None:
    """``python -m streams``: the stream commands on their own."""
    cli = typer.Typer(name="streams", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    register(cli)
    cli()
