"""``fluxscore score`` (the batch scorer) and ``fluxscore filters`` (what packages are installed)."""

from __future__ import annotations

import base64
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from scoring.article import Article, parse_article
from scoring.exceptions import ArticleValidationError, FluxscoreError
from scoring.package import available, load_package
from scoring.records import ScoreRecord
from scoring.settings import ScoringSettings

console = Console(stderr=True)


@dataclass
class ScoreSummary:
    """Counts the batch command prints; also what the streaming demo's summary reports."""

    read: int = 0
    rejected: int = 0
    records: int = 0
    tiers: Counter[tuple[str, str]] = field(default_factory=Counter)
    stages: Counter[tuple[str, str]] = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, record: ScoreRecord) -> None:
        self.records += 1
        self.stages[(record.filter.name, record.stage.value)] += 1
        if record.stage.value in ("stage1", "stage2"):
            self.tiers[(record.filter.name, record.tier.value)] += 1

    def table(self, title: str = "fluxscore score") -> Table:
        filters = sorted({name for name, _ in self.stages})
        table = Table(title=title)
        table.add_column("filter")
        for col in ("HIGH", "MEDIUM", "LOW", "stage1", "stage2", "prefilter", "commerce"):
            table.add_column(col, justify="right")
        for name in filters:
            table.add_row(name, *(str(self.tiers[(name, t)]) for t in ("HIGH", "MEDIUM", "LOW")),
                          *(str(self.stages[(name, s)]) for s in ("stage1", "stage2", "prefilter", "commerce")))
        rate = (self.read - self.rejected) / self.seconds if self.seconds > 0 else 0.0
        table.caption = (f"{self.read} read, {self.rejected} rejected, {self.records} records, "
                         f"{self.seconds:.1f} s, {rate:.1f} articles/s")
        return table


def _reject_line(line_no: int, raw: bytes, error: FluxscoreError) -> bytes:
    body: dict[str, object] = {"line": line_no, "error": type(error).__name__, "message": str(error),
                               **error.context}
    try:
        body["raw"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        body["raw_base64"] = base64.b64encode(raw).decode("ascii")
    return orjson.dumps(body) + b"\n"


def read_articles(stream: IO[bytes], rejects: IO[bytes], summary: ScoreSummary, *,
                  max_content_bytes: int) -> Iterator[Article]:
    """Articles from a JSONL stream; every bad line goes to ``rejects`` with its reason."""
    for line_no, raw in enumerate(stream, start=1):
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        summary.read += 1
        try:
            yield parse_article(line, max_content_bytes=max_content_bytes)
        except ArticleValidationError as exc:
            summary.rejected += 1
            rejects.write(_reject_line(line_no, line, exc))


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
            batch: list[Article] = []

            def flush() -> None:
                for record in pipeline.score(batch):
                    out.write(record.to_json() + b"\n")
                    summary.add(record)
                batch.clear()
                elapsed = time.perf_counter() - start
                progress.update(task, completed=source.tell() if total else summary.read,
                                rate=f"{(summary.read - summary.rejected) / max(elapsed, 1e-9):.1f} art/s")

            for article in read_articles(source, rej, summary, max_content_bytes=settings.max_content_bytes):
                batch.append(article)
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
    """Every filter package found on the search path, with its hash and model-file status."""
    table = Table(title="filter packages")
    for col in ("filter", "version", "package_hash", "stage 2", "models", "path"):
        table.add_column(col)
    for name, dirs in sorted(available().items()):
        for pkg_dir in dirs:
            try:
                pkg = load_package(pkg_dir)
            except FluxscoreError as exc:
                table.add_row(name, pkg_dir.name, "-", "-", f"[red]invalid: {exc}[/red]", str(pkg_dir))
                continue
            missing = pkg.missing_files()
            status = "[green]ready[/green]" if not missing else f"[yellow]missing {', '.join(missing)}[/yellow]"
            table.add_row(pkg.name, pkg.version, pkg.package_hash, "yes" if pkg.has_stage2 else "no", status,
                          str(pkg.path))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("score")(score)
    app.add_typer(filters_app, name="filters")
