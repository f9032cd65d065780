"""The image's environment and entrypoint, run as the image runs them (no Docker engine here): the same
variables, ``fluxscore worker`` started as its command, an empty volume on ``FLUXSCORE_FILTERS_PATH`` —
and the bundled filter packages still found, up to a scored record on the real broker."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import orjson
import pytest

from tests.integration.conftest import STREAM_FILTERS, StreamEnv, collect, produce_lines, synthetic_articles

pytestmark = pytest.mark.integration
DOCKERFILE = Path(__file__).resolve().parents[2] / "deploy" / "Dockerfile"


def image_env() -> dict[str, str]:
    """The ``ENV`` of the runtime stage, as Docker would set it."""
    text = DOCKERFILE.read_text()
    stage = text[text.index("AS runtime"):text.index("FROM runtime AS cuda")]
    joined = re.sub(r"\\\n\s*(#[^\n]*\n\s*)*", " ", stage)
    env: dict[str, str] = {}
    for line in joined.splitlines():
        if line.startswith("ENV "):
            env.update(dict(pair.split("=", 1) for pair in line[4:].split()))
    return env


def test_the_runtime_environment_is_what_the_workers_expect() -> None:
    env = image_env()
    assert env["FLUXSCORE_FILTERS_PATH"] == "/filters" and env["FLUXSCORE_OFFLINE"] == "1"
    assert env["FLUXSCORE_METRICS_PORT"] == "9108"


def test_a_worker_started_as_the_image_starts_it_scores_the_bundled_filters(stream_env: StreamEnv, workers,
                                                                             tmp_path: Path) -> None:
    empty_volume = tmp_path / "filters"
    empty_volume.mkdir()
    env = stream_env.env(**{k: v for k, v in image_env().items() if k.startswith(("FLUXSCORE_", "HF_"))
                            and k not in ("FLUXSCORE_METRICS_HOST", "FLUXSCORE_METRICS_PORT")})
    env.update(FLUXSCORE_FILTERS_PATH=str(empty_volume), PATH=str(Path(sys.executable).parent) + ":/usr/bin:/bin",
               FLUXSCORE_FILTERS=",".join(STREAM_FILTERS))
    env.pop("HF_HOME", None)  # the image's cache volume; here the user's cache
    workers(env, "all")
    lines = synthetic_articles(3, seed=41)
    produce_lines(stream_env, lines, tmp_path / "articles.jsonl")
    expected = {(orjson.loads(v)["id"], f) for v in lines for f in STREAM_FILTERS}
    got = collect(stream_env, lambda c: c.pairs >= expected, timeout=180)
    assert got.pairs == expected and got.dead == []
