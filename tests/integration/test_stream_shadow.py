"""Shadow scoring: a candidate version scored beside the live one, the differences on scores.shadow."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import orjson
import pytest
import yaml

from scoring.aggregate import tier_of
from scoring.package import load_package, resolve
from streams.kafka import make_consumer
from tests.integration.conftest import produce_lines, synthetic_articles
from training.export import write_manifest

pytestmark = pytest.mark.integration


async def _read(bootstrap: str, topic: str, n: int, timeout: float) -> list[dict]:
    consumer = make_consumer(bootstrap, topic)
    await consumer.start()
    got: list[dict] = []
    try:
        async with asyncio.timeout(timeout):
            while len(got) < n:
                for messages in (await consumer.getmany(timeout_ms=300)).values():
                    got.extend(orjson.loads(m.value) for m in messages)
    finally:
        await consumer.stop()
    return got


def test_shadow_version_is_compared_with_the_live_one(stream_env, workers, tmp_path: Path) -> None:
    root = tmp_path / "filters"
    live_src = resolve("demo")
    shutil.copytree(live_src.path, root / "demo" / live_src.version)
    candidate = root / "demo" / "9.0.0"
    shutil.copytree(live_src.path, candidate)
    config = yaml.safe_load((candidate / "filter.yaml").read_text())
    config["version"] = "9.0.0"
    config["tiers"] = {"high": 1.0, "medium": 0.5}  # the candidate calls almost everything HIGH
    (candidate / "filter.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    write_manifest(candidate)  # a new version, exported as such
    live, shadow = load_package(root / "demo" / live_src.version), load_package(candidate)

    search = os.pathsep.join(p for p in (str(root), os.environ.get("FLUXSCORE_FILTERS_PATH", "")) if p)
    env = stream_env.env(FLUXSCORE_FILTERS_PATH=search, FLUXSCORE_FILTERS=f"demo@{live.version},demo_tech",
                         FLUXSCORE_SHADOW_FILTERS="demo@9.0.0")
    workers(env, "shadow")
    lines = synthetic_articles(30, seed=51)
    produce_lines(stream_env, lines, tmp_path / "articles.jsonl")

    got = asyncio.run(_read(stream_env.bootstrap, stream_env.topic("scores.shadow"), 30, timeout=180))
    assert sorted(c["article_id"] for c in got) == sorted(orjson.loads(x)["id"] for x in lines)
    assert {c["filter"] for c in got} == {"demo"}
    for c in got:
        assert (c["live"]["version"], c["live"]["package_hash"]) == (live.version, live.package_hash)
        assert (c["shadow"]["version"], c["shadow"]["package_hash"]) == ("9.0.0", shadow.package_hash)
        # Same models, other tiers: equal scores, tiers that follow each version's own cut-offs.
        assert c["diff"] == 0.0 and set(c["dimension_diff"].values()) <= {0.0}
        value = c["live"]["weighted_average"]
        if c["live"]["stage"] in ("stage1", "stage2"):
            assert c["live"]["tier"] == tier_of(live.config, value)
            assert c["shadow"]["tier"] == tier_of(shadow.config, value)
        assert c["tier_agrees"] == (c["live"]["tier"] == c["shadow"]["tier"])
    assert any(not c["tier_agrees"] for c in got), "the generous tiers must show as differences"
