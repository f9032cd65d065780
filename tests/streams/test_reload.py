"""Hot reload's poll: cheap when nothing changed (a stat per file, no hashing), one hash per changed file."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import scoring.package as package_module
from scoring.package import FileHashCache, FilterPackage, resolve
from streams.metrics import StreamMetrics
from streams.reload import Reloader


class FakePipeline:
    """What the reloader reads and calls of a pipeline, without loading any model."""

    def __init__(self, live: FilterPackage, root: Path) -> None:
        self.roots = [root]
        self.filters: dict[str, Any] = {}
        self.added: list[FilterPackage] = []
        self._set(live)

    def _set(self, package: FilterPackage) -> None:
        self.filters[package.name] = SimpleNamespace(package=package, ref=SimpleNamespace(
            package_hash=package.package_hash))

    def add(self, package: FilterPackage) -> None:
        self.added.append(package)
        self._set(package)

    def describe(self) -> dict[str, object]:
        return {}


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """File name -> times its bytes were hashed (every package hash goes through sha256_file)."""
    counts: Counter[str] = Counter()
    real = package_module.sha256_file

    def counting(path: Path) -> str:
        counts[path.name] += 1
        return real(path)

    monkeypatch.setattr(package_module, "sha256_file", counting)
    return counts


@pytest.fixture
def installed(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the demo package under its own root: (root, package directory)."""
    source = resolve("demo")
    root = tmp_path / "filters"
    target = root / "demo" / source.version
    shutil.copytree(source.path, target)
    return root, target


def _reloader(root: Path, settle_seconds: float = 0.0) -> tuple[Reloader, FakePipeline]:
    pipeline = FakePipeline(resolve("demo", [root]), root)
    # The copied files are brand new; with the settle time at 0 the cache trusts them at once.
    reloader = Reloader(pipeline, ("demo",), StreamMetrics(),  # type: ignore[arg-type]
                        hashes=FileHashCache(settle_seconds=settle_seconds))
    return reloader, pipeline


async def _sync(fn: Any, *args: Any) -> Any:
    return fn(*args)


def test_a_poll_over_an_unchanged_package_hashes_no_file(installed: tuple[Path, Path], hashed: Counter[str]) -> None:
    root, _ = installed
    reloader, pipeline = _reloader(root)
    hashed.clear()
    assert reloader.changed() == []
    model_files = {"probe.safetensors", "adapter_model.safetensors", "calibration.json"}
    assert model_files <= set(hashed) and max(hashed.values()) == 1, "the first poll hashes each file once"
    hashed.clear()
    for _ in range(3):
        assert asyncio.run(reloader.poll(_sync)) == []
    assert hashed == Counter(), "unchanged files are not read again: a stat says so"
    assert pipeline.added == []


def test_a_touched_but_identical_file_is_hashed_once_and_not_reloaded(installed: tuple[Path, Path],
                                                                      hashed: Counter[str]) -> None:
    root, pkg = installed
    reloader, pipeline = _reloader(root)
    reloader.changed()
    hashed.clear()
    weights = pkg / "adapter" / "adapter_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # `touch`
    assert asyncio.run(reloader.poll(_sync)) == []
    assert hashed == Counter({"adapter_model.safetensors": 1})
    hashed.clear()
    assert asyncio.run(reloader.poll(_sync)) == []
    assert asyncio.run(reloader.poll(_sync)) == []
    assert hashed == Counter() and pipeline.added == [], "same bytes, same hash: nothing to reload"


def test_a_changed_file_is_hashed_once_and_loads_after_two_equal_polls(installed: tuple[Path, Path],
                                                                       hashed: Counter[str]) -> None:
    root, pkg = installed
    reloader, pipeline = _reloader(root)
    live_hash = pipeline.filters["demo"].ref.package_hash
    reloader.changed()
    hashed.clear()
    prompt = pkg / "prompt.md"
    prompt.write_text(prompt.read_text() + "\nScore conservatively.\n")
    assert asyncio.run(reloader.poll(_sync)) == [], "seen once: maybe still being copied"
    (loaded,) = asyncio.run(reloader.poll(_sync))
    assert hashed == Counter({"prompt.md": 1}), "only the changed file was read, once"
    (new,) = pipeline.added
    assert new.package_hash != live_hash and loaded == f"demo@{new.version}#{new.package_hash}"
    hashed.clear()
    assert asyncio.run(reloader.poll(_sync)) == [] and hashed == Counter()


def test_the_cache_trusts_a_stat_only_once_the_file_has_settled(tmp_path: Path, hashed: Counter[str]) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"aaaa")
    # Changed just now: a write within the file system's timestamp granularity could still follow unseen.
    fresh = FileHashCache(settle_seconds=3600)
    assert fresh.sha256(path) == fresh.sha256(path)
    assert hashed["w.bin"] == 2
    hashed.clear()
    settled = FileHashCache(settle_seconds=0)
    first = settled.sha256(path)
    assert settled.sha256(path) == first and hashed["w.bin"] == 1
    # Same size and the old mtime restored (cp -p, a careless tool): the ctime still tells the change.
    before = path.stat()
    path.write_bytes(b"bbbb")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert settled.sha256(path) != first
