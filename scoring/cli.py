"""``fluxscore score`` (the batch scorer) and ``fluxscore filters`` (what packages are installed)."""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from scoring.article import Article, Limits, parse_article
from scoring.exceptions import FluxscoreError
from scoring.isolate import isolate
from scoring.package import available, load_package
from scoring.records import ScoreRecord
from scoring.settings import ScoringSettings
from scoring.summary import ScoreSummary

if TYPE_CHECKING:
    from scoring.pipeline import Pipeline

console = Console(stderr=True)


def _reject_line(line_no: int, raw: bytes, error: Exception) -> bytes:
    # Any exception, not only validation errors: a line that breaks a later stage is rejected with
    # its reason like a malformed one, so every line ends scored or rejected.
    context = error.context if isinstance(error, FluxscoreError) else {}
    message = str(error) or type(error).__name__
    body: dict[str, object] = {"line": line_no, "error": type(error).__name__, "message": message,
                               **{k: (v if isinstance(v, (str, int, float, bool)) else str(v))
                                  for k, v in context.items()}}
    try:
        body["raw"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        body["raw_base64"] = base64.b64encode(raw).decode("ascii")
    return orjson.dumps(body) + b"\n"


@dataclass(frozen=True)
class Line:
    """One input line that parsed into an article, kept so a later failure can reject it verbatim."""

    number: int
    raw: bytes
    article: Article


def read_articles(stream: IO[bytes], rejects: IO[bytes], summary: ScoreSummary, *,
                  limits: Limits) -> Iterator[Line]:
    """Articles from a JSONL stream; every bad line goes to ``rejects`` with its reason."""
    for line_no, raw in enumerate(stream, start=1):
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        summary.read += 1
        try:
            article = parse_article(line, limits=limits)
        except Exception as exc:
            summary.rejected += 1
            rejects.write(_reject_line(line_no, line, exc))
            continue
        yield Line(line_no, line, article)


def score_lines(pipeline: Pipeline, lines: list[Line], out: IO[bytes], rejects: IO[bytes],
                summary: ScoreSummary) -> None:
    """Score one batch of lines: each line's records are written, or the line is rejected with its reason."""
    outputs, failed = isolate(pipeline.score, [line.article for line in lines])
    errors: dict[str, Exception] = {lines[i].article.id: exc for i, exc in failed}
    encoded: dict[str, list[tuple[ScoreRecord, bytes]]] = {}
    for records in outputs:
        for record in records:
            if record.article_id in errors:
                continue
            try:
                encoded.setdefault(record.article_id, []).append((record, record.to_json()))
            except Exception as exc:
                # All of an article's records or none: a half-scored article would look complete.
                errors[record.article_id] = exc
    for line in lines:
        error = errors.get(line.article.id)
        if error is not None:
            summary.rejected += 1
            rejects.write(_reject_line(line.number, line.raw, error))
            continue
        for record, payload in encoded.pop(line.article.id, []):
            out.write(payload + b"\n")
            summary.add(record)


def score(
    input_path: Annotated[Path, typer.Argument(help="articles, one JSON object per line ('-' for stdin)")],
    filters: Annotated[str, typer.Option(
        "--filters", "-f", help="name, name@version or package dir, comma-separated")] = "demo,demo_tech",
    output: Annotated[Path, typer.Option("--output", "-o", help="score records (JSONL)")] = Path("scores.jsonl"),
    rejects: Annotated[Path | None, typer.Option(help="rejected lines (JSONL); default OUTPUT.rejects.jsonl")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="articles per batch")] = 64,
    commerce: Annotated[bool, typer.Option(help="run the universal commerce detector")] = True,
) -> None:
    """Score a JSONL file of articles with one or more filters."""
    from scoring.pipeline import Pipeline

    settings = ScoringSettings.from_env()
    rejects = rejects or output.with_name(output.name.removesuffix(".jsonl") + ".rejects.jsonl")
    if str(input_path) != "-" and not input_path.is_file():
        console.print(f"[red]cannot read input: {input_path} does not exist or is not a file[/red]")
        raise typer.Exit(2)
    try:
        with console.status("loading filters and models"):
            pipeline = Pipeline.load(filters, settings=settings, commerce=commerce)
    except FluxscoreError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from None

    summary = ScoreSummary()
    total = None if str(input_path) == "-" else input_path.stat().st_size
    start = time.perf_counter()
    source: IO[bytes] = sys.stdin.buffer if str(input_path) == "-" else input_path.open("rb")
    try:
        with source, output.open("wb") as out, rejects.open("wb") as rej, Progress(
                TextColumn("[bold]scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), console=console, transient=False) as progress:
            task = progress.add_task("score", total=total, rate="")
            batch: list[Line] = []

            def flush() -> None:
                score_lines(pipeline, batch, out, rej, summary)
                batch.clear()
                elapsed = time.perf_counter() - start
                progress.update(task, completed=source.tell() if total else summary.read,
                                rate=f"{(summary.read - summary.rejected) / max(elapsed, 1e-9):.1f} art/s")

            for line in read_articles(source, rej, summary, limits=settings.limits):
                batch.append(line)
                if len(batch) >= batch_size:
                    flush()
            if batch:
                flush()
    except OSError as exc:
        console.print(f"[red]cannot read {input_path}: {exc}[/red]")
        raise typer.Exit(2) from None
    except FluxscoreError as exc:
        console.print(f"[red]scoring failed: {exc}[/red]")
        raise typer.Exit(1) from None
    summary.seconds = time.perf_counter() - start
    console.print(summary.table())
    console.print(f"records: {output}" + (f"   rejects ({summary.rejected}): {rejects}" if summary.rejected else ""))


filters_app = typer.Typer(help="Installed filter packages.", no_args_is_help=True)


@filters_app.command("list")
def list_filters() -> None:
    """Every filter package found on the search path, with its hash, model-file and verification status
    (``ok``: files match the hashes recorded at export; ``TAMPERED: <files>``; ``unverified``: no hashes)."""
    from rich.markup import escape

    table = Table(title="filter packages")
    for col in ("filter", "version", "package_hash", "stage 2", "models", "verified", "path"):
        table.add_column(col)
    for name, dirs in sorted(available().items()):
        for pkg_dir in dirs:
            try:
                pkg = load_package(pkg_dir)
                package_hash = pkg.package_hash
            except (FluxscoreError, OSError) as exc:  # an unreadable file: a row, not a traceback
                # Messages carry "[field=…]" context, which rich would read as markup.
                table.add_row(name, pkg_dir.name, "-", "-", f"[red]invalid: {escape(str(exc))}[/red]", "-",
                              str(pkg_dir))
                continue
            missing = pkg.missing_files()
            status = "[green]ready[/green]" if not missing else f"[yellow]missing {', '.join(missing)}[/yellow]"
            try:
                integrity = pkg.integrity()
                verified = {"ok": "[green]ok[/green]", "unverified": "[yellow]unverified[/yellow]"}.get(
                    integrity.status, f"[red]{escape(integrity.label)}[/red]")
                if missing and integrity.status == "unverified":
                    verified = "-"  # untrained: nothing to verify yet
            except (FluxscoreError, OSError) as exc:
                verified = f"[red]{escape(str(exc))}[/red]"
            table.add_row(pkg.name, pkg.version, package_hash, "yes" if pkg.has_stage2 else "no", status, verified,
                          str(pkg.path))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("score")(score)
    app.add_typer(filters_app, name="filters")
