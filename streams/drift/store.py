"""Where drift reports go: a directory of files, an Evidently workspace, or both.

The directory (``FLUXSCORE_MONITOR_REPORTS_DIR``, ``fluxscore drift report -o DIR``) holds per filter::

    DIR/<filter>/<stamp>-<version>-w<seq>.html           self-contained Evidently report
    DIR/<filter>/<stamp>-<version>-w<seq>.snapshot.json  Snapshot.dumps(): Snapshot.load reads it back
    DIR/<filter>/<stamp>-<version>-w<seq>.json           the JSON summary (as on monitor.drift)
    DIR/<filter>/latest.json                             the last summary, with the names of its files

which is what ``fluxscore drift serve --reports DIR`` lists. The workspace
(``FLUXSCORE_MONITOR_WORKSPACE``) is an ``evidently.ui.workspace.Workspace`` with one project per filter
(``fluxscore <filter>``), for ``evidently ui --workspace DIR``. Both keep the newest ``keep`` reports of
each filter, so a long-running monitor does not fill the disk (an HTML report is a few MB).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from streams.drift.report import DriftResult
from streams.exceptions import StreamError

log = logging.getLogger("fluxscore.streams.monitor")
LATEST = "latest.json"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_STEM = re.compile(r"^(?P<stamp>\d{8}T\d{12}Z)-(?P<version>[0-9A-Za-z._-]+)-w(?P<seq>\d+)$")
SUFFIXES = (".html", ".snapshot.json", ".json")


class ReportStoreError(StreamError):
    """A drift report could not be written where it was asked to go."""


def _write(path: Path, data: bytes) -> None:
    # Whole files only: the page (another process) may read while the monitor writes.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class ReportStore:
    directory: Path | None = None
    workspace: Path | None = None
    keep: int = 50

    def __post_init__(self) -> None:
        self._workspace: Any = None
        self._projects: dict[str, Any] = {}

    def __bool__(self) -> bool:
        return self.directory is not None or self.workspace is not None

    def save(self, result: DriftResult) -> dict[str, str]:
        """Write one report; returns where (``html``, ``snapshot``, ``summary``, ``workspace_run``)."""
        written: dict[str, str] = {}
        name = result.summary["filter"]
        if not _NAME.match(name):
            raise ReportStoreError(f"not a filter name: {name!r}")
        if self.directory is not None:
            written.update(self._save_files(result))
        if self.workspace is not None and result.snapshot is not None:
            written["workspace_run"] = self._save_run(result)
        return written

    def _save_files(self, result: DriftResult) -> dict[str, str]:
        assert self.directory is not None
        summary = result.summary
        folder = self.directory / summary["filter"]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReportStoreError(f"cannot create the report directory {folder}: {exc}") from None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        stem = f"{stamp}-{summary['version']}-w{summary['window']['seq']}"
        files = {"summary": f"{stem}.json"}
        if result.snapshot is not None:
            files["html"] = f"{stem}.html"
            files["snapshot"] = f"{stem}.snapshot.json"
            _write(folder / files["html"], result.snapshot.get_html_str(as_iframe=False).encode())
            _write(folder / files["snapshot"], result.snapshot.dumps().encode())
        body = orjson.dumps({**summary, "files": files}, option=orjson.OPT_INDENT_2)
        _write(folder / files["summary"], body)
        _write(folder / LATEST, body)
        self._prune(folder)
        return {k: str(folder / v) for k, v in files.items()}

    def _prune(self, folder: Path) -> None:
        stems = sorted({s for s in (_stem_of(p.name) for p in folder.iterdir()) if s is not None})
        for stem in stems[:-self.keep] if len(stems) > self.keep else []:
            for suffix in SUFFIXES:
                (folder / f"{stem}{suffix}").unlink(missing_ok=True)

    def _save_run(self, result: DriftResult) -> str:
        from evidently.ui.workspace import Workspace

        assert self.workspace is not None and result.snapshot is not None
        if self._workspace is None:
            self._workspace = Workspace.create(str(self.workspace))
        ws = self._workspace
        name = result.summary["filter"]
        project = self._projects.get(name)
        if project is None:
            title = f"fluxscore {name}"
            found = [p for p in ws.search_project(title) if p.name == title]
            project = found[0] if found else ws.create_project(
                title, description=f"Drift reports of the fluxscore filter {name} (one run per window)")
            self._projects[name] = project
        ref = ws.add_run(project.id, result.snapshot, include_data=False, name=result.name)
        # Run ids are uuid7, ordered by time: the oldest come first.
        runs = sorted(ws.list_runs(project.id), key=str)
        for old in runs[:-self.keep] if len(runs) > self.keep else []:
            ws.delete_run(project.id, old)
        return str(ref.id)


def _stem_of(filename: str) -> str | None:
    for suffix in SUFFIXES:
        if filename.endswith(suffix):
            stem = filename[: -len(suffix)]
            return stem if _STEM.match(stem) else None
    return None


@dataclass(frozen=True)
class ReportEntry:
    """One saved report of a filter, as the page lists it."""

    filter: str
    stem: str
    stamp: datetime
    version: str
    seq: int
    has_html: bool
    has_snapshot: bool

    @property
    def html(self) -> str:
        return f"{self.stem}.html"


def list_filters(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and _NAME.match(p.name))


def latest_summary(directory: Path, name: str) -> dict[str, Any] | None:
    path = directory / name / LATEST
    try:
        body = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return body if isinstance(body, dict) else None


def list_reports(directory: Path, name: str) -> list[ReportEntry]:
    """The saved reports of one filter, newest first."""
    folder = directory / name
    if not _NAME.match(name) or not folder.is_dir():
        return []
    names = {p.name for p in folder.iterdir()}
    entries = []
    for stem in sorted({s for s in (_stem_of(n) for n in names) if s}, reverse=True):
        match = _STEM.match(stem)
        assert match is not None
        stamp = datetime.strptime(match["stamp"], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
        entries.append(ReportEntry(name, stem, stamp, match["version"], int(match["seq"]),
                                   f"{stem}.html" in names, f"{stem}.snapshot.json" in names))
    return entries


def report_file(directory: Path, name: str, filename: str) -> Path | None:
    """The file of a saved report, or None: only names the store writes, inside ``directory``."""
    if not _NAME.match(name) or _stem_of(filename) is None:
        return None
    path = directory / name / filename
    try:
        if not path.resolve().is_relative_to(directory.resolve()) or not path.is_file():
            return None
    except OSError:
        return None
    return path
