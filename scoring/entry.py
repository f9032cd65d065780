"""The ``fluxscore`` command: one typer app, each package contributing its sub-commands.

Sub-command modules are imported here (and only here) so that ``scoring`` itself never depends on
``streams`` or ``training``: data flows one way, the command line is the one place that sees all.
"""

from __future__ import annotations

import logging
import os

# Read by huggingface_hub at import time, so it must be set before anything imports transformers.
if os.environ.get("FLUXSCORE_OFFLINE") == "1":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Our own progress display is rich's; transformers' per-load weight bars would interleave with it.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import typer

from scoring import cli as scoring_cli

app = typer.Typer(name="fluxscore", help="Streaming scorer for news articles.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
scoring_cli.register(app)


def _optional_parts() -> None:
    # streams/ and training/ are part of the same distribution; importing them lazily keeps
    # `fluxscore score` fast to start and lets each part own its commands.
    from streams.cli import register as register_streams
    from training.cli import app as train_app

    register_streams(app)
    app.add_typer(train_app, name="train", help="Train probes and students, calibrate, export packages.")


_optional_parts()


def main() -> None:
    logging.basicConfig(level=os.environ.get("FLUXSCORE_LOG_LEVEL", "WARNING").upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Whatever the level: HTTP client loggers stay at WARNING (their DEBUG lines print headers and URLs
    # that can carry an API key), and registered secrets are scrubbed from every line.
    from scoring.redact import protect_logging

    protect_logging()
    app()


if __name__ == "__main__":
    main()
