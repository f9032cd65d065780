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
from rich.markup import escape

from scoring.exceptions import FluxscoreError, SettingsError
from streams.exceptions import BrokerUnavailableError, StreamError
from streams.settings import StreamSettings

console = Console(stderr=True)

ROLE_HELP = ("prefilter, probe, model (any of them; comma-separated or repeated), all (those three), "
             "or shadow / monitor / selector / oracle / feedback (each alone: a consumer group of its own)")


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
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    try:
        code = run_worker(settings)
    except FluxscoreError as exc:
        # Startup problems (no such filter, broker unreachable): one clear line, not a traceback.
        logging.getLogger("fluxscore.streams.worker").critical("worker cannot start", extra={
            "error_type": type(exc).__name__, "error": str(exc)})
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def _stream_settings() -> StreamSettings:
    """The stream settings with a bootstrap server, or exit 2 with one line saying what to set."""
    try:
        settings = StreamSettings.from_env()
    except SettingsError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if not settings.kafka_bootstrap:
        console.print("[red]error:[/] set FLUXSCORE_KAFKA_BOOTSTRAP (or KAFKA_BOOTSTRAP)")
        raise typer.Exit(2)
    return settings


def _unreachable(exc: BrokerUnavailableError) -> typer.Exit:
    # soft_wrap: one line whatever the width, so the address stays whole for the reader and for grep.
    console.print(f"[red]error:[/] {escape(str(exc))} (FLUXSCORE_CONNECT_TIMEOUT sets the wait)", soft_wrap=True,
                  highlight=False)
    return typer.Exit(3)


def produce(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL, one article per line")],
    topic: Annotated[str | None, typer.Option(help="target topic (default: the raw articles topic)")] = None,
    rate: Annotated[float, typer.Option(help="messages per second; 0 = as fast as possible")] = 0.0,
    limit: Annotated[int | None, typer.Option(help="stop after this many messages")] = None,
    validate: Annotated[bool, typer.Option(
        help="reject lines the workers would dead-letter (not an article, above the FLUXSCORE_MAX_* limits); "
             "--no-validate publishes every line that fits in a message")] = True,
) -> None:
    """Publish a JSONL file of articles to Kafka, one message per line (its bytes as they are), keyed by
    article id.

    A line that is not published is reported with its number and reason; the others still are.

    Exit codes:
    0  every line published
    1  some lines rejected (the others published)
    2  a setting is missing or invalid
    3  the broker could not be reached within FLUXSCORE_CONNECT_TIMEOUT seconds
    """
    from scoring.article import parse_article
    from scoring.settings import ScoringSettings
    from streams.kafka import RejectedLine, publish_file, quiet_client_logs
    from streams.topics import Topics

    settings = _stream_settings()
    assert settings.kafka_bootstrap is not None
    try:
        # The bounds the workers apply, so a producer learns at once what the pipeline would dead-letter.
        limits = ScoringSettings.from_env().limits
    except SettingsError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    topics = Topics.from_settings(settings)
    name = topic or topics.raw.name

    def check(line: bytes) -> None:
        parse_article(line, limits=limits)

    def report(rejected: RejectedLine) -> None:
        console.print(f"[yellow]line {rejected.line} not published:[/] {escape(rejected.reason)}", highlight=False,
                      soft_wrap=True)

    started = time.perf_counter()
    try:
        with quiet_client_logs():
            result = asyncio.run(publish_file(
                file, settings.kafka_bootstrap, name, partitions=topics.raw.partitions,
                replication=settings.replication, rate=rate, limit=limit,
                max_batch_bytes=settings.producer_max_batch_bytes, max_message_bytes=settings.max_message_bytes,
                check=check if validate else None, on_reject=report, connect_timeout=settings.connect_timeout))
    except BrokerUnavailableError as exc:
        raise _unreachable(exc) from None
    seconds = time.perf_counter() - started
    rejected = len(result.rejected)
    console.print(f"published {result.published} messages to {escape(name)} in {seconds:.1f} s; "
                  f"rejected {rejected} line{'' if rejected == 1 else 's'}", highlight=False, soft_wrap=True)
    if rejected:
        raise typer.Exit(1)


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
    # Everything below comes from the topic: a "[filter=…]" in an error message (or any bracket in an id)
    # must print as text, not vanish as rich markup.
    e = escape
    where = f"[dim]{e(str(body['topic']))}\\[{body['partition']}]@{body['offset']}[/]"
    if isinstance(value, dict) and "tier" in value and "filter" in value:
        tier = value["tier"]
        color = {"HIGH": "green", "MEDIUM": "yellow", "LOW": "white"}.get(tier, "white")
        return (f"{where} {e(str(value['article_id']))}  "
                f"{e(str(value['filter']['name']))}@{e(str(value['filter']['version']))}  "
                f"[{color}]{e(f'{tier:<6}')}[/] {value['weighted_average']:5.2f}  via {e(str(value['stage']))}")
    if isinstance(value, dict) and "error" in value and "stage" in value:
        return (f"{where} [red]DLQ[/] {e(str(value.get('article_id') or '-'))}  stage={e(str(value['stage']))}  "
                f"{e(str(value['error']['type']).rsplit('.', 1)[-1])}: {e(str(value['error']['message']))}")
    if isinstance(value, dict) and "filter" in value and "columns" in value and "drifted_share" in value:
        return _pretty_drift(where, value)
    if isinstance(value, dict) and "rule" in value and "severity" in value and "filter" in value:
        color = "red" if value["severity"] == "critical" else "yellow"
        report = f"  report: {e(str(value['report']))}" if value.get("report") else ""
        return (f"{where} [{color}]ALERT[/] {e(str(value['filter']))}@{e(str(value.get('version', '?')))} "
                f"window #{e(str(value.get('window', '?')))}  {e(str(value['rule']))} ({e(str(value['severity']))}): "
                f"{e(str(value.get('message', '')))}{report}")
    return f"{where} {e(orjson.dumps(value).decode()[:300])}"


_STATUS_COLORS = {"ok": "green", "alert": "yellow", "critical": "red"}


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else escape(str(value))


def _pretty_drift(where: str, report: dict[str, Any]) -> str:
    """A whole drift report (``monitor.drift``), over as many lines as it needs: nothing is cut."""
    e = escape
    status = str(report.get("status", "drift" if report.get("drift_detected") else "ok"))
    window = report.get("window") or {}
    lines = [f"{where} [bold]{e(str(report['filter']))}@{e(str(report.get('version', '?')))}[/] "
             f"(package {e(str(report.get('package_hash', '?')))})  window #{e(str(window.get('seq', '?')))} "
             f"({e(str(window.get('trigger', '?')))}, {report.get('current_rows', '?')} rows)  "
             f"[{_STATUS_COLORS.get(status, 'white')}]{e(status.upper())}[/]"]
    reference = report.get("reference") or {}
    lines.append(f"  reference: {e(str(reference.get('label', reference.get('kind', '?'))))}, "
                 f"{report.get('reference_rows', '?')} rows — {e(str(reference.get('detail', '')))}")
    for alert in report.get("alerts") or []:
        color = "red" if alert.get("severity") == "critical" else "yellow"
        lines.append(f"  [{color}]alert[/] {e(str(alert.get('rule')))} ({e(str(alert.get('severity')))}): "
                     f"{e(str(alert.get('message', '')))}")
    rates = report.get("rates") or {}
    if rates:
        ref, cur = rates.get("reference") or {}, rates.get("current") or {}
        lines.append(f"  {'statistic':<22}{'reference':>12}{'current':>12}")
        lines += [f"  {e(name):<22}{_num(ref.get(name)):>12}{_num(cur.get(name)):>12}" for name in cur]
    columns = report.get("columns") or {}
    if columns:
        lines.append(f"  {'column':<28}{'test':<22}{'value':>10}{'threshold':>11}  drifted")
        for name, result in columns.items():
            flag = "[red]yes[/]" if result.get("drifted") else "no"
            lines.append(f"  {e(name):<28}{e(str(result.get('method'))):<22}{_num(result.get('value')):>10}"
                         f"{_num(result.get('threshold')):>11}  {flag}")
        lines.append(f"  drifted columns: {report.get('drifted_share', 0):.0%}")
    embeddings = report.get("embeddings") or {}
    if embeddings.get("available"):
        lines.append(f"  embeddings: {e(str(embeddings.get('method')))} {_num(embeddings.get('score'))} (limit "
                     f"{_num(embeddings.get('threshold'))}; {embeddings.get('reference_rows')} reference, "
                     f"{embeddings.get('current_rows')} current)")
    elif embeddings:
        lines.append(f"  embeddings: not compared — {e(str(embeddings.get('note') or 'no sample'))}")
    for column, shares in (report.get("current_share") or {}).items():
        if shares:
            lines.append(f"  {e(column)} shares: " + ", ".join(f"{e(str(k))} {v:.0%}" for k, v in shares.items()))
    saved = report.get("report") or {}
    if saved.get("html"):
        lines.append(f"  report: {e(str(saved['html']))}")
    if report.get("evaluated_at"):
        lines.append(f"  evaluated at {e(str(report['evaluated_at']))}")
    return "\n".join(lines)


async def tail(bootstrap: str, topic: str, *, as_json: bool, from_beginning: bool, limit: int | None,
               idle_timeout: float | None, connect_timeout: float = 30.0) -> int:
    """Print the messages of ``topic``; at most ``limit`` in all (whatever the partitions); returns the count.

    Raises :class:`~streams.kafka.TopicNotFoundError` when the topic does not exist (a consumer would wait
    for it in silence) and :class:`BrokerUnavailableError` after ``connect_timeout`` s without the broker.
    """
    from streams.kafka import TopicNotFoundError, make_consumer, similar_topics, start_client, topic_names

    existing = await topic_names(bootstrap, timeout=connect_timeout)
    if topic not in existing:
        raise TopicNotFoundError(topic, bootstrap=bootstrap, similar=similar_topics(topic, existing))
    consumer = make_consumer(bootstrap, topic, from_beginning=from_beginning)
    await start_client(consumer, bootstrap, connect_timeout)
    out = Console(highlight=False, soft_wrap=True)
    seen = 0
    try:
        last = time.monotonic()
        while limit is None or seen < limit:
            wanted = 500 if limit is None else min(500, limit - seen)
            batches = await consumer.getmany(timeout_ms=500, max_records=wanted)
            if not batches:
                if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    break
                continue
            last = time.monotonic()
            # One batch holds messages of several partitions: the limit counts them all together.
            messages = [msg for part in batches.values() for msg in part]
            for msg in messages[:wanted]:
                body = _message_json(msg)
                if as_json:
                    sys.stdout.write(orjson.dumps(body).decode() + "\n")
                else:
                    out.print(_pretty(body))
                seen += 1
            sys.stdout.flush()
    finally:
        await consumer.stop()
    return seen


def consume(
    topic: Annotated[str, typer.Argument(help="topic name, e.g. scores.all (FLUXSCORE_TOPIC_PREFIX is added)")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line instead of pretty output")] = False,
    from_beginning: Annotated[bool, typer.Option("--from-beginning/--latest")] = True,
    limit: Annotated[int | None, typer.Option(min=1, help="exit after this many messages (in all partitions "
                                                          "together)")] = None,
    idle_timeout: Annotated[float | None, typer.Option(help="exit after this many seconds without a message")]
    = None,
) -> None:
    """Tail a topic: scores pretty-printed, dead letters with their reason, drift reports and alerts in full,
    or raw JSON lines.

    Exit codes:
    0  done (limit reached, idle timeout, or interrupted)
    1  the topic does not exist (topics with a similar name are listed)
    2  a setting is missing or invalid
    3  the broker could not be reached within FLUXSCORE_CONNECT_TIMEOUT seconds
    """
    from streams.kafka import TopicNotFoundError, quiet_client_logs

    settings = _stream_settings()
    assert settings.kafka_bootstrap is not None
    name = topic if topic.startswith(settings.topic_prefix) else settings.topic_prefix + topic
    try:
        with quiet_client_logs():
            asyncio.run(tail(settings.kafka_bootstrap, name, as_json=as_json, from_beginning=from_beginning,
                             limit=limit, idle_timeout=idle_timeout, connect_timeout=settings.connect_timeout))
    except KeyboardInterrupt:
        pass
    except TopicNotFoundError as exc:
        added = f" (FLUXSCORE_TOPIC_PREFIX {settings.topic_prefix!r} was added)" if name != topic else ""
        console.print(f"[red]error:[/] {escape(str(exc))}{escape(added)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except BrokerUnavailableError as exc:
        raise _unreachable(exc) from None


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
    from streams.admin import topics_app

    app.add_typer(topics_app, name="topics")
    from streams.annotate.cli import annotate_app

    app.add_typer(annotate_app, name="annotate")
    # replay: re-score a range of articles.raw (or a file) with pinned package versions (streams/replay.py).
    from streams.replay import replay_command

    app.command("replay")(replay_command)
    # drift: drift reports offline, and the reports page (streams/drift/cli.py).
    from streams.drift.cli import drift_app

    app.add_typer(drift_app, name="drift")


def main() -> None:
    """``python -m streams``: the stream commands on their own."""
    cli = typer.Typer(name="streams", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    register(cli)
    cli()
