"""Settings of the training commands (``fluxscore train …``), read once from the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from scoring.settings import FluxscoreSettings


class TrainingSettings(FluxscoreSettings):
    """Where training keeps what it can reuse between runs."""

    doc_title: ClassVar[str] = "training (`fluxscore train …`)"

    # User-level, not the current directory: embeddings are keyed by encoder and text, so every project
    # and run on this machine shares them.
    cache_dir: Path = Field(Path("~/.cache/fluxscore").expanduser(), description=(
        "cache of computed embeddings, under `<dir>/embeddings` (reused across training runs, projects and "
        "the benchmarks)"), json_schema_extra={"default_doc": "`~/.cache/fluxscore`"})

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _user_path(cls, value: Any) -> Any:
        return Path(value).expanduser() if isinstance(value, str) else value
