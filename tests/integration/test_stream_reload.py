"""Hot reload: a new version of a filter package goes live in a running worker, and shows in provenance."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson
import pytest
import yaml

from scoring.package import load_package, resolve
from tests.integration.conftest import STREAM_FILTERS, collect, produce_lines, synthetic_articles
from training.export import write_manifest

pytestmark = pytest.mark.integration


def test_new_package_version_is_picked_up_without_restart(stream_env, workers, tmp_path: Path) -> None:
    root = tmp_path / "filters"
    for name in STREAM_FILTERS:
        source = resolve(name)
        shutil.copytree(source.path, root / name / source.version)
    search = os.pathsep.join(p for p in (str(root), os.environ.get("FLUXSCORE_FILTERS_PATH", "")) if p)
    env = stream_env.env(FLUXSCORE_FILTERS_PATH=search, FLUXSCORE_RELOAD_INTERVAL="0.5")
    worker = workers(env)
    old = {name: resolve(name, [root]) for name in STREAM_FILTERS}

    first = synthetic_articles(20, seed=41)
    produce_lines(stream_env, first, tmp_path / "first.jsonl")
    got = collect(stream_env, lambda c: len(c.records) >= 40, timeout=120, settle=0)
    assert {orjson.loads(v[0])["filter"]["package_hash"] for v in got.records.values()} == \
        {p.package_hash for p in old.values()}

    # Publish demo 1.0.1: same models, a stricter MEDIUM tier, so the behaviour (and hash) differ.
    new_dir = root / "demo" / "1.0.1"
    shutil.copytree(old["demo"].path, new_dir)
    config = yaml.safe_load((new_dir / "filter.yaml").read_text())
    config["version"] = "1.0.1"
    config["tiers"]["medium"] = float(config["tiers"]["medium"]) + 0.5
    (new_dir / "filter.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    write_manifest(new_dir)  # a new version, exported as such
    new = load_package(new_dir)
    reloaded = worker.wait_for_log("filter reloaded", timeout=60)
    assert (reloaded["filter"], reloaded["version"], reloaded["package_hash"]) == ("demo", "1.0.1", new.package_hash)

    second = synthetic_articles(20, seed=42)
    produce_lines(stream_env, second, tmp_path / "second.jsonl")
    second_ids = {orjson.loads(line)["id"] for line in second}
    got = collect(stream_env, lambda c: len(c.records) >= 80, timeout=120)
    later = [orjson.loads(v[0]) for v in got.records.values()]
    later = [r for r in later if r["article_id"] in second_ids]
    assert len(later) == 40
    assert {(r["filter"]["name"], r["filter"]["version"], r["filter"]["package_hash"]) for r in later} == {
        ("demo", "1.0.1", new.package_hash), ("demo_tech", old["demo_tech"].version, old["demo_tech"].package_hash)}
    assert worker.proc is not None and worker.proc.poll() is None, "the worker was not restarted"
