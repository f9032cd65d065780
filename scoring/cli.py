"""``fluxscore score`` (the batch scorer) and ``fluxscore filters`` (what packages are installed)."""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Protocol

import orjson
import typer
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.measure import Measurement
from rich.padding import Padding
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from scoring.article import Article, Limits, parse_article
from scoring.exceptions import FluxscoreError
from scoring.isolate import isolate
from scoring.package import STAGE1_FINAL, FilterPackage, available, load_package
from scoring.records import ScoreRecord
from scoring.settings import ScoringSettings
from scoring.summary import ScoreSummary

if TYPE_CHECKING:
    from scoring.pipeline import Pipeline

console = Console(stderr=True)

# The exit codes of ``fluxscore score``, in its help and the README.
EXIT_SCORED, EXIT_FAILED, EXIT_IO, EXIT_FILTERS, EXIT_NOTHING_SCORED = 0, 1, 2, 3, 4


class InputReadError(FluxscoreError):
    """The input file cannot be opened or read; names it."""


class OutputWriteError(FluxscoreError):
    """An output file (records or rejects) cannot be created or written; names it.

    Its own type so that a full disk or a missing directory is never reported as a problem of the input.
    """


class Writer(Protocol):
    def write(self, data: bytes, /) -> object: ...


class _Sink:
    """An output file whose write errors name it."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        try:
            self._fh: IO[bytes] = path.open("wb")
        except OSError as exc:
            raise self._error(exc) from None

    def _error(self, exc: OSError) -> OutputWriteError:
        return OutputWriteError(f"cannot write the {self.what} file {self.path}: {exc.strerror or exc}")

    def write(self, data: bytes) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            raise self._error(exc) from None

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            self._fh.close()  # buffered bytes are written here, so a full disk may only show now
        except OSError as exc:
            if kind is None:
                raise self._error(exc) from None


def _input_lines(stream: IO[bytes], name: str) -> Iterator[bytes]:
    """The lines of ``stream``; a read error raises :class:`InputReadError` naming the input."""
    lines = iter(stream)
    while True:
        try:
            raw = next(lines)
        except StopIteration:
            return
        except OSError as exc:
            raise InputReadError(f"cannot read the input {name}: {exc.strerror or exc}") from None
        yield raw


def default_rejects(output: Path) -> Path:
    """Where rejected lines go by default: ``scores.jsonl`` -> ``scores.rejects.jsonl``; another name gets
    ``.rejects.jsonl`` appended (``scores.out`` -> ``scores.out.rejects.jsonl``)."""
    return output.with_name(output.name.removesuffix(".jsonl") + ".rejects.jsonl")


def fit(table: Table) -> Table:
    """Long cells of ``table`` wrap at spaces (or fold, a hash or a path) instead of ending in an ellipsis;
    the first column, the names, is never broken."""
    for i, column in enumerate(table.columns):
        column.overflow = "fold"
        column.no_wrap = i == 0
    return table


def as_records(table: Table) -> Group:
    """``table`` as one block per row (its first cell, then ``column: value`` lines): what a terminal too
    narrow for the columns gets, where a table would break every word of every column."""
    columns = table.columns
    cells = [list(column.cells) for column in columns]
    parts: list[RenderableType] = []
    if table.title:
        parts.append(Text.from_markup(table.title, style="bold") if isinstance(table.title, str) else table.title)
    for row in range(table.row_count):
        name = cells[0][row]
        parts.append(Text.from_markup(name, style="bold") if isinstance(name, str) else name)
        fields = Table.grid(padding=(0, 1))
        fields.add_column(style="dim", no_wrap=True)
        fields.add_column(overflow="fold")
        for column, values in zip(columns[1:], cells[1:], strict=True):
            fields.add_row(column.header, values[row])
        parts.append(Padding(fields, (0, 0, 0, 2)))
    if table.caption:
        parts.append(table.caption)
    return Group(*parts)


def _stage2_cell(pkg: FilterPackage) -> str:
    """Whether the package escalates: a student it never routes to (stage 1 final) is not a stage 2."""
    if not pkg.has_stage2:
        return "no"
    return "yes" if pkg.config.stage1.threshold < STAGE1_FINAL else "no (stage 1 final)"


def print_table(table: Table, out: Console) -> None:
    """Print ``table`` on ``out``, every cell whole: in a terminal as wide as it is, one block per row where
    the columns cannot fit; a pipe or a file gets one line per row (for grep and cut), whatever ``COLUMNS``."""
    fit(table)
    # Measured without the console's width, which would clamp the result to it.
    needed = Measurement.get(out, out.options.update_width(100_000), table)
    if not out.is_terminal:
        Console(file=out.file, width=max(out.width, needed.maximum), highlight=False, no_color=True).print(table)
    elif needed.minimum > out.width:
        # Even with every cell wrapped at its spaces the columns would not fit: words would be cut.
        out.print(as_records(table))
    else:
        out.print(table)


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


def read_articles(stream: Iterable[bytes], rejects: Writer, summary: ScoreSummary, *,
                  limits: Limits) -> Iterator[Line]:
    """Articles from JSONL lines; every bad line goes to ``rejects`` with its reason."""
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


def score_lines(pipeline: Pipeline, lines: list[Line], out: Writer, rejects: Writer,
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


def _fail(message: str, code: int) -> typer.Exit:
    # Messages carry "[field=…, path=…]" context, which rich would otherwise read as markup and drop.
    console.print(f"[red]{escape(message)}[/red]", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def score(
    input_path: Annotated[Path, typer.Argument(help="articles, one JSON object per line ('-' for stdin)")],
    filters: Annotated[str, typer.Option(
        "--filters", "-f", help="name, name@version or package dir, comma-separated")] = "demo,demo_tech",
    output: Annotated[Path, typer.Option("--output", "-o", help="score records (JSONL)")] = Path("scores.jsonl"),
    rejects: Annotated[Path | None, typer.Option(help=(
        "rejected lines with their reasons (JSONL); default: OUTPUT with .jsonl replaced by .rejects.jsonl "
        "(scores.jsonl: scores.rejects.jsonl; another name gets .rejects.jsonl appended)"))] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="articles per batch")] = 64,
    commerce: Annotated[bool, typer.Option(help="run the universal commerce detector")] = True,
) -> None:
    """Score a JSONL file of articles with one or more filters.

    Every line ends scored (its records in OUTPUT) or rejected with its reason (in the rejects file).

    Exit codes:
    0  articles were scored (some lines may have been rejected)
    1  scoring failed
    2  the input cannot be read, an output cannot be written, or a setting is invalid
    3  the filters could not be loaded
    4  nothing could be scored (every line rejected, or none in the input)
    """
    from scoring.pipeline import Pipeline

    try:
        settings = ScoringSettings.from_env()
    except FluxscoreError as exc:
        raise _fail(str(exc), EXIT_IO) from None
    rejects = rejects or default_rejects(output)
    from_stdin = str(input_path) == "-"
    if not from_stdin and not input_path.is_file():
        raise _fail(f"cannot read the input {input_path}: it does not exist or is not a file", EXIT_IO)
    # Before the models load (which takes a while): a mistyped output directory fails at once.
    for what, path in (("output", output), ("rejects", rejects)):
        if not path.parent.is_dir():
            raise _fail(f"cannot write the {what} file {path}: the directory {path.parent} does not exist", EXIT_IO)
    try:
        with console.status("loading filters and models"):
            pipeline = Pipeline.load(filters, settings=settings, commerce=commerce)
    except FluxscoreError as exc:
        raise _fail(str(exc), EXIT_FILTERS) from None

    summary = ScoreSummary()
    total = None if from_stdin else input_path.stat().st_size
    start = time.perf_counter()
    try:
        source: IO[bytes] = sys.stdin.buffer if from_stdin else input_path.open("rb")
    except OSError as exc:
        raise _fail(f"cannot read the input {input_path}: {exc.strerror or exc}", EXIT_IO) from None
    try:
        # The bar advances with the bytes read (the file's size is the only total known in advance);
        # the counts and the rate beside it are articles.
        with source, _Sink(output, "output") as out, _Sink(rejects, "rejects") as rej, Progress(
                TextColumn("[bold]scoring"), BarColumn(), TaskProgressColumn(),
                TextColumn("{task.fields[articles]}"), TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), console=console, transient=False) as progress:
            task = progress.add_task("score", total=total, articles="0 articles", rate="")
            batch: list[Line] = []

            def advance(done: bool = False) -> None:
                elapsed = time.perf_counter() - start
                scored = summary.read - summary.rejected
                position = (total if done else source.tell()) if total else summary.read
                progress.update(task, completed=position,
                                articles=f"{scored} articles scored, {summary.rejected} rejected",
                                rate=f"{scored / max(elapsed, 1e-9):.1f} articles/s")

            def flush() -> None:
                score_lines(pipeline, batch, out, rej, summary)
                batch.clear()
                advance()

            for line in read_articles(_input_lines(source, str(input_path)), rej, summary, limits=settings.limits):
                batch.append(line)
                if len(batch) >= batch_size:
                    flush()
            if batch:
                flush()
            advance(done=True)
    except (InputReadError, OutputWriteError) as exc:
        raise _fail(str(exc), EXIT_IO) from None
    except FluxscoreError as exc:
        raise _fail(f"scoring failed: {exc}", EXIT_FAILED) from None
    summary.seconds = time.perf_counter() - start
    print_table(summary.table(), console)
    console.print(f"records: {escape(str(output))}" + (
        f"   rejects ({summary.rejected}): {escape(str(rejects))}" if summary.rejected else ""), soft_wrap=True,
        highlight=False)
    if summary.read == summary.rejected:
        raise _fail("nothing could be scored: " + (f"all {summary.read} lines were rejected (see {rejects})"
                                                   if summary.read else f"no article in {input_path}"),
                    EXIT_NOTHING_SCORED)


filters_app = typer.Typer(help="Installed filter packages.", no_args_is_help=True)


@filters_app.command("list")
def list_filters() -> None:
    """Every filter package found on the search path, with its hash, whether it blocks commerce, model-file
    and verification status (``ok``: files match the hashes recorded at export; ``TAMPERED: <files>``;
    ``unverified``: no hashes). ``commerce``: ``blocks`` when the package's ``prefilter.block_commerce`` is
    true (the commerce detector's verdict ends the article for it), else ``passes``."""
    table = Table(title="filter packages")
    for col in ("filter", "version", "package_hash", "stage 2", "commerce", "models", "verified", "path"):
        table.add_column(col)
    for name, dirs in sorted(available().items()):
        for pkg_dir in dirs:
            try:
                pkg = load_package(pkg_dir)
                package_hash = pkg.package_hash
            except (FluxscoreError, OSError) as exc:  # an unreadable file: a row, not a traceback
                # Messages carry "[field=…]" context, which rich would read as markup.
                table.add_row(escape(name), escape(pkg_dir.name), "-", "-", "-",
                              f"[red]invalid: {escape(str(exc))}[/red]", "-", escape(str(pkg_dir)))
                continue
            missing = pkg.missing_files()
            status = "[green]ready[/green]" if not missing else f"[yellow]missing {escape(', '.join(missing))}[/yellow]"
            try:
                integrity = pkg.integrity()
                verified = {"ok": "[green]ok[/green]", "unverified": "[yellow]unverified[/yellow]"}.get(
                    integrity.status, f"[red]{escape(integrity.label)}[/red]")
                if missing and integrity.status == "unverified":
                    verified = "-"  # untrained: nothing to verify yet
            except (FluxscoreError, OSError) as exc:
                verified = f"[red]{escape(str(exc))}[/red]"
            commerce = "blocks" if pkg.config.prefilter.block_commerce else "passes"
            table.add_row(pkg.name, pkg.version, package_hash, _stage2_cell(pkg), commerce, status,
                          verified, escape(str(pkg.path)))
    print_table(table, Console())


def show_settings(
    markdown: Annotated[bool, typer.Option(help="the README's table of every variable instead of the values")] =
    False,
) -> None:
    """Every setting with the value in effect here (from the environment or its default); secrets masked."""
    from pydantic import SecretStr

    from scoring.exceptions import SettingsError
    from scoring.settings import SETTINGS_MODULES, FluxscoreSettings, documented_table, env_name

    table_text = documented_table()  # also imports every part's settings module
    if markdown:
        typer.echo(table_text, nl=False)
        return
    rows: list[tuple[str, str, str]] = []
    for cls in FluxscoreSettings.registry:
        if not any(cls.__module__.startswith(name) for name in SETTINGS_MODULES):
            continue
        try:
            values = cls.from_env()
        except SettingsError as exc:
            rows.append((cls.doc_title or cls.__name__, "(invalid)", str(exc)))
            continue
        for field in type(values).model_fields:
            value = getattr(values, field)
            shown = "********" if isinstance(value, SecretStr) else (
                ",".join(map(str, value)) if isinstance(value, tuple) else str(value))
            rows.append((cls.doc_title or cls.__name__, env_name(cls, field), shown))
    if not sys.stdout.isatty():
        for group, name, value in rows:
            typer.echo(f"{name}\t{value}\t{group}")
        return
    table = Table(title="fluxscore settings in effect")
    for col in ("variable", "value", "part"):
        table.add_column(col, overflow="fold")
    for group, name, value in rows:
        table.add_row(escape(name), escape(value), escape(group))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("score")(score)
    app.add_typer(filters_app, name="filters")
    app.command("settings")(show_settings)
