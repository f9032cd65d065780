"""The ``fluxscore`` command: one typer app, each installed package contributing its own sub-commands.

Packages register through the ``fluxscore.commands`` entry points (``pyproject.toml``): each names a
``register(app)`` function. This module imports none of them itself, so ``scoring`` stays the ground
floor that ``streams`` and ``training`` build on. A part that cannot be imported — a stream-worker image
without the training extras, a training machine without Faust — leaves its commands out; calling one
of them says, in one line, which extras to install.
"""

from __future__ import annotations

import logging
import os

from scoring.settings import ScoringSettings

# Read by huggingface_hub at import time, so it must be set before anything imports transformers.
if ScoringSettings.from_env().offline:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Our own progress display is rich's; transformers' per-load weight bars would interleave with it.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

import typer

GROUP = "fluxscore.commands"


@dataclass(frozen=True)
class MissingPart:
    """A registered part whose module could not be imported, and the extras that would provide it."""

    name: str
    error: str
    extra: str | None

    def line(self, command: str | None = None) -> str:
        what = f"fluxscore {command}" if command else "fluxscore"
        if self.extra is None:
            # Not an optional part: the installation itself is broken.
            return f"{what}: the {self.name!r} commands cannot be loaded ({self.error}); reinstall fluxscore"
        return (f"{what}: the {self.extra!r} extras are not installed ({self.error}); "
                f"pip install 'fluxscore[{self.extra}]'")


def _extra_of(entry: EntryPoint) -> str | None:
    """The distribution's extra named like the entry point (``train`` -> ``fluxscore[train]``), if any."""
    dist = getattr(entry, "dist", None)
    extras = set(dist.metadata.get_all("Provides-Extra") or []) if dist is not None else set()
    return entry.name if entry.name in extras else None


def build_app(entries: Iterable[EntryPoint] | None = None) -> tuple[typer.Typer, list[MissingPart]]:
    """The top-level app with every part that imports; the parts that do not, with why."""
    app = typer.Typer(name="fluxscore", help="Streaming scorer for news articles.", no_args_is_help=True,
                      add_completion=False, pretty_exceptions_enable=False)
    missing: list[MissingPart] = []
    found = list(entry_points(group=GROUP) if entries is None else entries)
    # By name: a stable command order whatever order the metadata lists them in (score, stream, train).
    for entry in sorted(found, key=lambda e: e.name):
        try:
            register: Callable[[typer.Typer], None] = entry.load()
        except ImportError as exc:
            missing.append(MissingPart(entry.name, str(exc), _extra_of(entry)))
            continue
        register(app)
    if not found:
        missing.append(MissingPart("all", f"no {GROUP} entry points: fluxscore is not installed", None))
    if missing:
        # No square brackets: the help is rich markup, where "[train]" would vanish as a tag.
        app.info.epilog = "Not installed here: " + "; ".join(
            f"the {m.extra!r} extras" if m.extra else f"the {m.name!r} commands ({m.error})" for m in missing)
    return app, missing


def unavailable(app: typer.Typer, missing: Sequence[MissingPart], args: Sequence[str]) -> str | None:
    """The one line to print instead of running ``args``, when they name a command a missing part would add."""
    command = next((a for a in args if not a.startswith("-")), None)
    if not missing:
        return None
    if not (app.registered_commands or app.registered_groups):
        # Nothing to run at all (typer cannot even print help for an empty app).
        return " | ".join(m.line(command) for m in missing)
    if command is None or command in typer.main.get_group(app).commands:
        return None
    named = [m for m in missing if m.name == command]
    if named:
        return named[0].line(command)
    # Which missing part holds the command is unknown without importing it: name them all.
    return " | ".join(m.line(command) for m in missing)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=ScoringSettings.from_env().log_level,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Whatever the level: HTTP client loggers stay at WARNING (their DEBUG lines print headers and URLs
    # that can carry an API key), and registered secrets are scrubbed from every line.
    from scoring.redact import protect_logging

    protect_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    app, missing = build_app()
    line = unavailable(app, missing, args)
    if line is not None:
        print(line, file=sys.stderr)
        raise SystemExit(1)
    app(args=args, prog_name="fluxscore")


if __name__ == "__main__":
    main()
