"""``fluxscore drift report`` (a drift report from scored records, offline) and ``fluxscore drift serve``."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from scoring.exceptions import FluxscoreError
from scoring.records import ScoreRecord, StageUsed

console = Console(stderr=True)
drift_app = typer.Typer(help="Drift reports of the scores: render one offline, or serve the reports page.",
                        no_args_is_help=True, add_completion=False)


class ArticleTexts:
    """Article id -> model input text, read on demand from a JSONL file (only offsets stay in memory)."""

    def __init__(self, path: Path) -> None:
        import orjson

        self.path = path
        self.offsets: dict[str, int] = {}
        with path.open("rb") as fh:
            offset = 0
            for line in fh:
                if line.strip():
                    try:
                        article_id = orjson.loads(line).get("id")
                    except (orjson.JSONDecodeError, AttributeError):
                        article_id = None
                    if isinstance(article_id, str):
                        self.offsets.setdefault(article_id, offset)
                offset += len(line)
        self._fh: IO[bytes] = path.open("rb")

    def get(self, article_id: str) -> str | None:
        from scoring.article import parse_article
        from scoring.text import article_text

        offset = self.offsets.get(article_id)
        if offset is None:
            return None
        self._fh.seek(offset)
        try:
            return article_text(parse_article(self._fh.readline()))
        except FluxscoreError:
            return None

    def close(self) -> None:
        self._fh.close()


def _file_records(path: Path, advance: Callable[[int], None]) -> Iterator[ScoreRecord | None]:
    with path.open("rb") as fh:
        for line in fh:
            advance(len(line))
            if not line.strip():
                continue
            try:
                yield ScoreRecord.from_json(line)
            except Exception:
                yield None  # counted as unreadable


def _topic_records(topic: str, idle_timeout: float, advance: Callable[[int], None]) -> Iterator[ScoreRecord | None]:
    from streams.kafka import make_consumer
    from streams.settings import StreamSettings

    settings = StreamSettings.from_env()
    if not settings.kafka_bootstrap:
        console.print("[red]error:[/] --topic needs FLUXSCORE_KAFKA_BOOTSTRAP (or KAFKA_BOOTSTRAP)")
        raise typer.Exit(2)
    name = topic if topic.startswith(settings.topic_prefix) else settings.topic_prefix + topic
    loop = asyncio.new_event_loop()
    consumer = make_consumer(settings.kafka_bootstrap, name, from_beginning=True)
    loop.run_until_complete(consumer.start())
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle_timeout:
            batches = loop.run_until_complete(consumer.getmany(timeout_ms=500, max_records=500))
            for messages in batches.values():
                last = time.monotonic()
                for msg in messages:
                    advance(1)
                    try:
                        yield ScoreRecord.from_json(msg.value or b"")
                    except Exception:
                        yield None
    finally:
        loop.run_until_complete(consumer.stop())
        loop.close()


@drift_app.command("report")
def report(
    filter_name: Annotated[str, typer.Option("--filter", "-f", help="the filter whose records to report on")],
    output: Annotated[Path, typer.Option("--output", "-o", help="report directory (what `drift serve` lists)")],
    from_file: Annotated[Path | None, typer.Option("--from", exists=True, dir_okay=False,
                                                   help="score records, JSONL (as `fluxscore score` writes)")] = None,
    topic: Annotated[str | None, typer.Option(help="or read them from this topic, e.g. scores.all")] = None,
    window: Annotated[int, typer.Option(min=20, help="records per window")] = 500,
    every: Annotated[int | None, typer.Option(min=1, help="new records between reports (default: --window, "
                                                          "so windows do not overlap)")] = None,
    reference: Annotated[str, typer.Option(help="auto (the package's profile, else the first records), window "
                                                "(the first records), or a JSONL file of score records")] = "auto",
    reference_size: Annotated[int, typer.Option(min=20, help="records in the reference")] = 500,
    articles: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help=(
        "the articles (JSONL) the records are of: a sample is embedded for embedding drift"))] = None,
    sample: Annotated[int, typer.Option(min=0, help="articles embedded per window (with --articles)")] = 64,
    workspace: Annotated[Path | None, typer.Option(help="also add the reports to this Evidently workspace")] = None,
    idle_timeout: Annotated[float, typer.Option(help="with --topic: stop after this many idle seconds")] = 10.0,
    fail_on_alert: Annotated[bool, typer.Option(help="exit with status 3 when any window alerts")] = False,
) -> None:
    """Render drift reports (HTML, Evidently snapshot, JSON summary per window) from scored records."""
    from scoring.package import search_roots
    from scoring.settings import ScoringSettings
    from streams.drift.store import ReportStore
    from streams.drift.windows import DriftTracker, package_lookup, stage1_embedder
    from streams.monitor import load_reference

    if (from_file is None) == (topic is None):
        console.print("[red]error:[/] give exactly one of --from FILE.jsonl and --topic TOPIC")
        raise typer.Exit(2)
    fixed: list[ScoreRecord] = []
    if reference not in ("auto", "window"):
        ref_path = Path(reference)
        if not ref_path.is_file():
            console.print(f"[red]error:[/] --reference {reference}: not auto, window or a file")
            raise typer.Exit(2)
        fixed = [r for r in load_reference(ref_path) if r.filter.name == filter_name]
    scoring = ScoringSettings.from_env()
    texts = ArticleTexts(articles) if articles is not None else None
    tracker = DriftTracker(reference_size=reference_size, window=window, every=every or window,
                           sample_size=sample if texts is not None else 0, reference_records=fixed,
                           reference_name=reference, use_package_reference=reference == "auto",
                           lookup=package_lookup(search_roots(scoring.filters_path)),
                           embedder=stage1_embedder(scoring) if texts is not None else None)
    store = ReportStore(output, workspace)
    results: list[dict[str, Any]] = []
    seen = unreadable = 0
    columns = (TextColumn("[bold]drift report"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[windows]} windows"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            total = from_file.stat().st_size if from_file is not None else None
            task = progress.add_task("records", total=total, windows=0)

            def advance(n: int) -> None:
                progress.advance(task, n)

            def flush(final: bool = False) -> None:
                due = tracker.due()
                if final:
                    due = [(n, "end") for n, w in tracker.filters.items() if w.since_report > 0 and n == filter_name]
                for name, trigger in due:
                    result = tracker.run(tracker.take(name, trigger))
                    result.summary["report"] = store.save(result)
                    results.append(result.summary)
                    progress.update(task, windows=len(results))

            records = (_file_records(from_file, advance) if from_file is not None
                       else _topic_records(topic or "", idle_timeout, advance))
            for record in records:
                if record is None:
                    unreadable += 1
                    continue
                if record.filter.name != filter_name:
                    continue
                seen += 1
                if not tracker.add(record):
                    continue
                if texts is not None and record.prefilter.passed and record.stage != StageUsed.PREFILTER:
                    text = texts.get(record.article_id)
                    if text is not None:
                        tracker.add_text([filter_name], text)
                flush()
            windows = tracker.filters.get(filter_name)
            from streams.drift.report import MIN_VALUES

            if windows is not None and len(windows.current) >= MIN_VALUES and len(windows.reference) >= MIN_VALUES:
                flush(final=True)
    except FluxscoreError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    finally:
        if texts is not None:
            texts.close()
    _print_results(results, filter_name, seen, unreadable, output)
    if not results:
        raise typer.Exit(1)
    if fail_on_alert and any(r["alerts"] for r in results):
        raise typer.Exit(3)


def _print_results(results: list[dict[str, Any]], name: str, seen: int, unreadable: int, output: Path) -> None:
    table = Table(title=f"drift of {name}")
    for col in ("window", "version", "rows", "reference", "status", "alerts", "report"):
        table.add_column(col)
    color = {"ok": "green", "alert": "yellow", "critical": "red"}
    for r in results:
        table.add_row(f"#{r['window']['seq']}", r["version"], str(r["window"]["rows"]), r["reference"]["label"],
                      f"[{color.get(r['status'], 'white')}]{r['status']}[/]",
                      ", ".join(a["rule"] for a in r["alerts"]) or "-", (r.get("report") or {}).get("html", "-"))
    table.caption = (f"{seen} records of {name}" + (f", {unreadable} unreadable lines skipped" if unreadable else "")
                     + f"; reports under {output}")
    Console().print(table)
    if not results:
        console.print(f"[yellow]no window to report:[/] {seen} records of {name} (a report needs a reference "
                      "and a window of at least 20 records each)")


@drift_app.command("serve")
def serve(
    reports: Annotated[Path, typer.Option(file_okay=False, help="report directory (FLUXSCORE_MONITOR_REPORTS_DIR or "
                                                                "`drift report -o`)")],
    host: Annotated[str | None, typer.Option(help="bind address (default FLUXSCORE_MONITOR_PAGE_HOST, "
                                                  "127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default FLUXSCORE_MONITOR_PAGE_PORT, 8765)")] = None,
) -> None:
    """Serve a page listing each filter's last window and its reports, behind a sign-in token."""
    import uvicorn

    from scoring.redact import register_secret
    from streams.drift.page import create_app
    from streams.settings import StreamSettings

    settings = StreamSettings.from_env()
    secret = settings.monitor_page_token
    token = secret.get_secret_value() if secret is not None else ""
    if not token:
        token = secrets.token_urlsafe(24)
        console.print(f"FLUXSCORE_MONITOR_PAGE_TOKEN is not set; sign in with this token: [bold]{token}[/]")
    register_secret(token)
    bind, bind_port = host or settings.monitor_page_host, port if port is not None else settings.monitor_page_port
    console.print(f"drift reports of {reports} on http://{bind}:{bind_port}/")
    uvicorn.run(create_app(reports, token), host=bind, port=bind_port, log_level="warning")
