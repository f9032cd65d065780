"""Settings of the training commands (``fluxscore train …``), read once from the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from scoring.settings import FluxscoreSettings


class TrainingSettings(FluxscoreSettings):
    """Where training keeps what it can reuse between runs."""

    doc_title: ClassVar[str] = "training (`fluxscore train …`)"

    cache_dir: Path = Field(Path(".cache/fluxscore"), description=(
        "cache of computed embeddings (reused across training runs and the quality benchmark)"))

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _user_path(cls, value: Any) -> Any:
        return Path(value).expanduser() if isinstance(value, str) else value
