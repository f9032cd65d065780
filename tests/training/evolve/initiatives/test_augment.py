"""Targeted augmentation end to end: real MiniLM probe, tiny Gemma student, real Ledger/Meter, synthetic data.

The helpers at the top (a parent package, labelled data, a context) are shared by the curriculum and
distillation tests.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from scoring.article import parse_article
from scoring.package import FilterPackage, load_package
from scoring.pipeline import Pipeline
from scoring.settings import ScoringSettings
from training.evolve.base import Context
from training.evolve.exceptions import BudgetExhausted
from training.evolve.initiatives import augment
from training.evolve.initiatives._candidate import set_config_value
from training.evolve.initiatives.augment import Params, paraphrase, read_rows
from training.evolve.ledger import Ledger
from training.synth import SynthConfig, generate, write_jsonl

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[4]
FAST = {"fractions": [0.6, 0.1, 0.15, 0.15], "probe": {"max_epochs": 10, "hidden": [32]},
        "student": {"epochs": 1, "batch_size": 8, "lora_r": 4, "lora_alpha": 8}}


def parent_package(root: Path, base: Path, *, adapter: Path | None = None) -> FilterPackage:
    """The demo filter's definition with a tiny Gemma student and short cuts (fast on a CPU)."""
    pkg = root / "demo" / "1.0.0"
    pkg.mkdir(parents=True)
    for name in ("filter.yaml", "prompt.md"):
        shutil.copy(REPO / "filters" / "demo" / "1.0.0" / name, pkg / name)
    set_config_value(pkg, "stage2", "base_model", str(base))
    set_config_value(pkg, "stage2", "max_length", 96)
    set_config_value(pkg, "preprocessing", "head_tokens", 48)
    set_config_value(pkg, "preprocessing", "tail_tokens", 16)
    set_config_value(pkg, "prefilter", "block_commerce", False)
    if adapter is not None:
        shutil.copytree(adapter, pkg / "adapter")
    return load_package(pkg)


def labelled_data(path: Path, n: int = 48, seed: int = 5) -> Path:
    records = generate(SynthConfig(n=n, seed=seed, commerce_fraction=0.0))
    write_jsonl(records, path)
    return path


def context(tmp: Path, package: FilterPackage, data: Path, kind: str, params: dict[str, Any], *,
            cache: Path, ledger: Ledger | None = None, allocation: float = 1000.0, clock: Any = None,
            upstream: dict[str, Any] | None = None) -> tuple[Context, Ledger]:
    ledger = ledger or Ledger(tmp / "ledger.jsonl")
    extra = {"clock": clock} if clock is not None else {}
    meter = ledger.meter(kind, allocation=allocation, price_per_hour=3600.0, device="cpu", **extra)  # $1 per s
    work = tmp / "work" / kind
    work.mkdir(parents=True, exist_ok=True)
    return Context(initiative=kind, kind=kind, package=package, train_data=data, heldout_ids=frozenset(), work=work,
                   meter=meter, params=params, cache_dir=cache, upstream=upstream or {}), ledger


def assert_complete_candidate(path: Path, parent: FilterPackage) -> FilterPackage:
    """The candidate loads, is complete, has its own version and a manifest matching its files, and scores."""
    package = load_package(path)
    assert package.missing_files() == []
    assert package.name == parent.name and package.version != parent.version
    manifest = orjson.loads((path / "export.json").read_bytes())
    assert manifest["package_hash"] == package.package_hash and manifest["version"] == package.version
    pipeline = Pipeline.load([package], settings=ScoringSettings(), commerce=False)
    article = parse_article(orjson.dumps({"id": "probe-1", "title": "A new clinic opens",
                                          "content": "The city opened a clinic that serves everyone. " * 12}))
    records = pipeline.score([article])
    assert len(records) == 1 and records[0].filter.name == parent.name
    return package


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache for the session: the initiatives' tests embed the same articles."""
    return shared_cache(tmp_path_factory)


def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "evolve-embeddings"
    path.mkdir(exist_ok=True)
    return path


def test_paraphrase_keeps_sentences_and_changes_order() -> None:
    content = "One is here. Two is there. Three is near.\n\nFour goes. Five comes.\n\nSix. Seven.\n\nEight."
    title, body = paraphrase("Title", content, 1, seed=0)
    assert sorted(s.strip(".") for s in body.replace("\n\n", " ").split(" ") if s) == \
        sorted(s.strip(".") for s in content.replace("\n\n", " ").split(" ") if s)
    assert body.split("\n\n")[0].count(".") == 3  # the lede paragraph stays first
    variants = {paraphrase("Title", content, v, seed=0) for v in range(1, 6)}
    assert len(variants) > 1 and paraphrase("Title", content, 2, seed=0)[0] == "Title" and title != "Title"


def test_params_refuse_unknown_and_cut_fields() -> None:
    with pytest.raises(ValueError, match="Extra inputs"):
        Params.model_validate({"min_exampels": 3})
    with pytest.raises(ValueError, match="max_length"):
        Params.model_validate({"student": {"max_length": 2048}})
    with pytest.raises(ValueError, match="unknown student recipe"):
        Params.model_validate({"student": {"epoch": 2}})


def test_oracle_params_map_onto_the_oracle_settings_with_the_environment_as_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXSCORE_ORACLE_MODEL", "env-model")
    monkeypatch.setenv("FLUXSCORE_ORACLE_RPM", "7")
    settings = Params.model_validate({"mode": "oracle", "oracle": {"provider": "gemini", "api_key_env": "MY_KEY"}}
                                     ).oracle.settings()
    assert (settings.provider, settings.api_key_env, settings.model, settings.rpm) == ("gemini", "MY_KEY",
                                                                                        "env-model", 7.0)
    assert settings.base_url == "https://generativelanguage.googleapis.com"
    assert Params.model_validate({"oracle": {"model": "m"}}).oracle.settings().model == "m"
    with pytest.raises(ValueError, match="Extra inputs"):
        Params.model_validate({"mode": "oracle", "oracle": {"temperature": 1}})


def test_augment_end_to_end_marks_synthetic_rows_keeps_them_in_train_and_resumes(
        tmp_path: Path, tiny_gemma: Path, cache: Path) -> None:
    parent = parent_package(tmp_path / "filters", tiny_gemma)
    data = labelled_data(tmp_path / "labelled.jsonl")
    params = {**FAST, "by": ["tier", "language"], "min_examples": 14, "max_per_group": 4}

    # A first try stopped by its allocation mid-generation ($1 per second, the clock one second per look).
    ticks = itertools.count()
    ctx, ledger = context(tmp_path, parent, data, "augment", params, cache=cache, allocation=6.0,
                          clock=lambda: float(next(ticks)))
    with pytest.raises(BudgetExhausted):
        augment.run(ctx)
    checkpoint = ctx.checkpoints / augment.SYNTHETIC_FILE
    first = read_rows(checkpoint)
    assert first and ledger.spent("augment") >= 6.0

    ctx, ledger = context(tmp_path, parent, data, "augment", params, cache=cache, ledger=Ledger(ledger.path))
    outcome = augment.run(ctx)
    assert outcome.notes["reused_from_checkpoint"] == len(first)
    rows = read_rows(checkpoint)
    assert [r["id"] for r in rows[:len(first)]] == [r["id"] for r in first]  # append-only, nothing made twice
    assert len({r["id"] for r in rows}) == len(rows) == outcome.notes["synthetic_rows"] > 0
    for row in rows:
        meta = row["metadata"]
        assert meta["synthetic"] is True and meta["generator"] == augment.GENERATOR and meta["synthetic_of"]
    groups = outcome.notes["groups"]
    assert groups and all(g["real"] < 14 and g["synthetic"] <= 4 for g in groups.values())

    splits = ctx.work / "workspace" / "splits"
    ids = {name: [orjson.loads(line)["id"] for line in (splits / f"{name}.jsonl").read_bytes().splitlines()]
           for name in ("train", "validation", "calibration", "test")}
    synthetic = {r["id"] for r in rows}
    assert synthetic <= set(ids["train"])
    for name in ("validation", "calibration", "test"):
        assert not synthetic & set(ids[name])
    # Every variant comes from a real train row: no twin of an evaluation article is trained on.
    assert {r["metadata"]["synthetic_of"] for r in rows} <= set(ids["train"]) - synthetic
    # The calibration maps were fitted on real calibration rows only.
    package = assert_complete_candidate(outcome.package_dir, parent)  # type: ignore[arg-type]
    calibration = orjson.loads(package.file("calibration.json").read_bytes())
    assert calibration["fitted_on"]["stage1"]["n"] == len(ids["calibration"])

    jobs = {e["job"] for e in ledger.entries if e["kind"] == "charge"}
    assert {"augment: generate", "augment: train"} <= jobs
    assert ledger.device_seconds("augment") > 0
    assert np.isfinite(outcome.metrics["student_validation_mae"])


def _marked(data: Path, path: Path) -> Path:
    """The labelled data with markers for the fake oracle in some rows: every 4th source fails to be
    generated (malformed answers), every 7th is generated but its article fails to be labelled (the
    marker travels into the generated text and the labelling answer scores out of range)."""
    rows = [orjson.loads(line) for line in data.read_bytes().splitlines()]
    for i, row in enumerate(rows):
        case = "malformed" if i % 4 == 1 else "range" if i % 7 == 3 else None
        if case:
            row["content"] = f"{row['content']} case:{case} key:{row['id']}"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def test_augment_oracle_mode_generates_labels_checkpoints_and_skips_failures(
        tmp_path: Path, tiny_gemma: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scoring.text import article_text
    from tests.training.oracle.common import KEY, KEY_ENV
    from tests.training.oracle_server import OracleServer
    from training.dataset import load_labelled
    from training.oracle import build_messages
    from training.oracle.fake import hashed_scores
    from training.oracle.generate import GENERATION_MARKER

    parent = parent_package(tmp_path / "filters", tiny_gemma)
    data = _marked(labelled_data(tmp_path / "plain.jsonl"), tmp_path / "labelled.jsonl")
    for name, value in {"RPM": "0", "BACKOFF": "0.01", "MAX_ATTEMPTS": "2", "TIMEOUT": "5"}.items():
        monkeypatch.setenv(f"FLUXSCORE_ORACLE_{name}", value)
    monkeypatch.setenv(KEY_ENV, KEY)
    server = OracleServer(KEY, dimensions_from_prompt=True).start()
    try:
        oracle = {"provider": "openai", "base_url": f"{server.url}/v1", "model": "fake-gen", "api_key_env": KEY_ENV}
        params = {**FAST, "mode": "oracle", "oracle": oracle, "by": ["tier", "language"], "min_examples": 14,
                  "max_per_group": 4}

        # Stopped by its allocation mid-generation ($1 per second, the clock one second per look).
        ticks = itertools.count()
        ctx, ledger = context(tmp_path, parent, data, "augment", params, cache=cache, allocation=20.0,
                              clock=lambda: float(next(ticks)))
        with pytest.raises(BudgetExhausted):
            augment.run(ctx)
        checkpoint = ctx.checkpoints / augment.SYNTHETIC_FILE
        first = read_rows(checkpoint)
        assert first and len(server.seen) > 0

        seen = len(server.seen)
        ctx, ledger = context(tmp_path, parent, data, "augment", params, cache=cache, ledger=Ledger(ledger.path))
        outcome = augment.run(ctx)
        notes = outcome.notes
        rows = read_rows(checkpoint)
        assert [r["id"] for r in rows[:len(first)]] == [r["id"] for r in first]  # append-only
        assert notes["reused_from_checkpoint"] == len(first)
        assert len({r["id"] for r in rows}) == len(rows) == notes["synthetic_rows"] > 0

        # Failures are skipped with their reason counted; with the made rows they are the whole plan.
        skipped = notes["skipped"]
        assert any(k.startswith("generation: ") and "no JSON object" in k for k in skipped)
        assert any(k.startswith("labelling: ") and "outside 0-10" in k for k in skipped)
        assert notes["synthetic_rows"] + sum(skipped.values()) == notes["planned_rows"]
        assert notes["planned_rows"] <= sum(min(14 - g["real"], 4) for g in notes["groups"].values())

        # Marked like paraphrase rows, labelled by the oracle on their own text (not the source's scores).
        dims = parent.config.dimension_names
        real = load_labelled(data, dims, filter_name=parent.name)
        sources = {rid: list(target) for rid, target in zip(real.ids, real.targets, strict=True)}
        prompt = parent.file(parent.config.oracle_prompt).read_text(encoding="utf-8")
        # The rerun asked for none of the rows the first run finished.
        titles = {orjson.loads(line)["id"]: orjson.loads(line)["title"] for line in data.read_bytes().splitlines()}
        asked = [s.body["messages"][-1]["content"] for s in server.seen[seen:]
                 if GENERATION_MARKER in s.body["messages"][0]["content"]]
        assert len(asked) == notes["generation_requests"] > 0
        for row in first:
            meta = row["metadata"]
            assert not [u for u in asked if u.startswith(f"Write variant {meta['variant']} ")
                        and f"\n{titles[meta['synthetic_of']]}\n" in u]
        differ = 0
        for row in rows:
            meta = row["metadata"]
            assert meta["synthetic"] is True and meta["generator"] == "fluxscore.evolve.oracle"
            assert meta["model"] == row["oracle"]["model"] == "fake-gen" and meta["synthetic_of"] in sources
            assert row["content"].startswith("Correspondents filed this report") and "truth" not in row
            _, user = build_messages(parent, prompt, article_text(parse_article(orjson.dumps(row))))
            assert row["oracle"]["scores"] == hashed_scores(list(dims), user)
            differ += [row["oracle"]["scores"][d] for d in dims] != sources[meta["synthetic_of"]]
        assert differ > len(rows) // 2

        splits = ctx.work / "workspace" / "splits"
        train_ids = {orjson.loads(line)["id"] for line in (splits / "train.jsonl").read_bytes().splitlines()}
        assert {r["id"] for r in rows} <= train_ids
        assert_complete_candidate(outcome.package_dir, parent)  # type: ignore[arg-type]

    finally:
        server.stop()
    jobs = {e["job"] for e in ledger.entries if e["kind"] == "charge"}
    assert "augment: generate" in jobs
