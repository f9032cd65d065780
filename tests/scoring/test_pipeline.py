"""The stages wired together, on real models: MiniLM embeddings, trained probes, a tiny Gemma-3 student."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from scoring.article import Article
from scoring.calibration import Calibration, IsotonicMap
from scoring.embedding import EmbeddingKey, embed
from scoring.exceptions import PackageError, ScoringError
from scoring.package import load_package
from scoring.pipeline import Escalation, Pipeline, Screened
from scoring.records import StageUsed
from tests.conftest import student_package, toy_texts, train_tiny_student
from training.export import write_manifest

pytestmark = pytest.mark.integration

ENCODER = "all-MiniLM-L6-v2"


def _probe(pkg: Path, dims: list[str], seed: int) -> None:
    from scoring.embedding import load_embedder
    from training.probe import train_probe

    texts = toy_texts(40, seed=seed)
    emb = load_embedder(ENCODER).encode(texts, head=64, tail=16)
    targets = np.random.default_rng(seed).uniform(0, 10, size=(len(texts), len(dims)))
    probe, _ = train_probe(emb, targets, dims, ENCODER, max_epochs=5, patience=2, seed=seed)
    probe.save(pkg / "probe.safetensors", pkg / "probe.json")


def _edit(pkg: Path, **changes: object) -> None:
    raw = yaml.safe_load((pkg / "filter.yaml").read_text())
    for dotted, value in changes.items():
        node = raw
        *path, last = dotted.split("__")
        for part in path:
            node = node[part]
        node[last] = value
    (pkg / "filter.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    write_manifest(pkg)  # edited on purpose: record its files, or serving refuses it as tampered


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory, tiny_gemma: Path) -> Path:
    root = tmp_path_factory.mktemp("pkgs")
    dims_a = ["impact", "evidence", "reach"]
    adapter = train_tiny_student(tiny_gemma, dims_a, root / "adapter-a")
    pkg_a = student_package(root, "alpha", dims_a, base=str(tiny_gemma), adapter=adapter)
    _probe(pkg_a, dims_a, seed=1)
    _edit(pkg_a, prefilter={"exclusions": [{"name": "sports", "keywords": ["curling"]}]})
    raw = np.linspace(0, 10, 50)
    Calibration(maps={"stage1": {"impact": IsotonicMap.fit(raw, np.clip(raw + 1, 0, 10))}}).save(
        pkg_a / "calibration.json")
    _edit(pkg_a, calibration="calibration.json")

    dims_b = ["novelty", "quality"]
    pkg_b = student_package(root, "beta", dims_b, base=str(tiny_gemma))
    _probe(pkg_b, dims_b, seed=2)
    raw_b = yaml.safe_load((pkg_b / "filter.yaml").read_text())
    del raw_b["stage2"]  # stage 1 only: no student trained yet
    (pkg_b / "filter.yaml").write_text(yaml.safe_dump(raw_b, sort_keys=False))
    write_manifest(pkg_b)
    return root


def articles(n: int = 12) -> list[Article]:
    out = [Article(id=f"a{i}", title=f"Story {i}", content=text) for i, text in enumerate(toy_texts(n, seed=7))]
    out.append(Article(id="sport", title="Curling tonight", content="The curling match ended 7-5. " * 5))
    out.append(Article(id="shop", title="Deal: 40% off headphones",
                       content="Buy now for $59.99 (was $99.99). Use coupon code SAVE40 at checkout. "
                               "This post contains affiliate links; we may earn a commission. Add to cart today!"))
    return out


def load(root: Path, **thresholds: float) -> Pipeline:
    for name, value in thresholds.items():
        _edit(root / name / "1.0.0", stage1__threshold=value)
    return Pipeline.load([load_package(root / "alpha" / "1.0.0"), load_package(root / "beta" / "1.0.0")])


def test_one_record_per_article_and_filter(packages: Path) -> None:
    pipeline = load(packages, alpha=0.0)
    batch = articles()
    records = pipeline.score(batch)
    keys = [(r.article_id, r.filter.name) for r in records]
    assert sorted(keys) == sorted((a.id, f) for a in batch for f in ("alpha", "beta"))
    by_key = {(r.article_id, r.filter.name): r for r in records}
    assert by_key[("sport", "alpha")].stage is StageUsed.PREFILTER
    assert by_key[("sport", "alpha")].prefilter.reason.startswith("excluded:sports")
    assert by_key[("sport", "beta")].stage is StageUsed.STAGE1
    assert by_key[("shop", "alpha")].stage is StageUsed.COMMERCE
    assert by_key[("shop", "alpha")].commerce.blocked
    # threshold 0: every open article escalates for alpha; beta has no student and stays at stage 1
    blocked = {StageUsed.PREFILTER, StageUsed.COMMERCE}
    alpha_open = [r for r in records if r.filter.name == "alpha" and r.stage not in blocked]
    assert alpha_open
    assert {r.stage for r in alpha_open} == {StageUsed.STAGE2}
    assert {r.stage for r in records if r.filter.name == "beta" and r.article_id.startswith("a")} == {StageUsed.STAGE1}
    texts = {a.id: a.content.lower() for a in batch}
    for r in records:
        if r.stage is StageUsed.PREFILTER:
            assert "curling" in texts[r.article_id]


def test_threshold_routes_between_stages(packages: Path) -> None:
    records = load(packages, alpha=10.0).score(articles())
    alpha = [r for r in records if r.filter.name == "alpha" and r.stage is not StageUsed.PREFILTER
             and r.article_id.startswith("a")]
    assert alpha
    assert {r.stage for r in alpha} == {StageUsed.STAGE1}
    for r in alpha:
        assert r.stage1_estimate is not None and r.stage1_estimate < 10.0
        assert r.escalation_threshold == 10.0


def test_records_carry_provenance_and_calibration(packages: Path) -> None:
    pipeline = load(packages, alpha=10.0)
    [record] = [r for r in pipeline.score(articles(3)) if r.article_id == "a0" and r.filter.name == "alpha"]
    assert record.stage is StageUsed.STAGE1
    pkg = load_package(packages / "alpha" / "1.0.0")
    assert record.filter.package_hash == pkg.package_hash
    assert {"probe", "adapter", "calibration", "commerce", "embedding_model"} <= record.model_hashes.keys()
    impact = record.dimensions["impact"]
    assert impact.calibrated == pytest.approx(min(max(impact.raw + 1.0, 0.0), 10.0), abs=0.25)
    assert record.key == f"a0|alpha|{pkg.package_hash}|{record.text_hash}" and len(record.text_hash or "") == 16
    assert {"prefilter", "embed", "probe"} <= record.timings_ms.keys()


def test_staged_path_over_the_wire_equals_in_process(packages: Path) -> None:
    """What the stream workers do (JSON between stages) yields the records the batch command does."""
    pipeline = load(packages, alpha=3.0)
    batch = articles()
    direct = {r.key: r for r in pipeline.score(batch)}
    records, screened = pipeline.screen(batch)
    screened = [Screened.model_validate_json(s.model_dump_json()) for s in screened]
    final, escalations = pipeline.probe(screened)
    escalations = [Escalation.model_validate_json(e.model_dump_json()) for e in escalations]
    staged = {r.key: r for r in [*records, *final, *pipeline.escalate(escalations)]}
    assert staged.keys() == direct.keys()
    for key, record in staged.items():
        other = direct[key]
        assert record.stage == other.stage
        assert record.tier == other.tier
        assert record.weighted_average == pytest.approx(other.weighted_average, abs=1e-4)


def test_screen_and_probe_workers_load_no_student(packages: Path) -> None:
    load(packages, alpha=0.0)
    front = Pipeline.load([load_package(packages / "alpha" / "1.0.0")], students=False)
    assert front.students is None
    _, screened = front.screen(articles(3))
    final, escalations = front.probe(screened)
    assert escalations and not final
    with pytest.raises(ScoringError, match="loaded without students"):
        front.escalate(escalations)


def test_commerce_sees_the_window_it_was_trained_on(packages: Path) -> None:
    """The test filters cut 64+16 tokens; the detector gets its own 128+64 embedding, not theirs."""
    from scoring.embedding import load_embedder

    pipeline = load(packages, alpha=10.0)
    assert pipeline.commerce is not None
    cfg = pipeline.commerce.config
    key = EmbeddingKey.of_commerce(cfg)
    assert key not in {f.embedding_key for f in pipeline.filters.values()}
    batch = articles(4)
    _, screened = pipeline.screen(batch)
    final, _ = pipeline.probe(screened)
    own = embed(load_embedder(cfg.embedding_model), key, [s.text for s in screened], batch_size=8)
    expected = pipeline.commerce.classify([s.commerce for s in screened], own)  # type: ignore[misc]
    got = {r.article_id: r.commerce for r in final if r.filter.name == "beta"}
    assert got  # the shop is blocked by rules alone, at screening; the others reach the classifier
    for item, want in zip(screened, expected, strict=True):
        if item.article.id in got:
            assert got[item.article.id].score == pytest.approx(want.score, rel=1e-3, abs=1e-12)


def test_probe_on_another_encoder_is_refused(packages: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "alpha" / "1.0.0"
    shutil.copytree(packages / "alpha" / "1.0.0", copy)
    _edit(copy, stage1__embedding_model="intfloat/multilingual-e5-small")
    with pytest.raises(PackageError, match="trained on"):
        Pipeline.load([load_package(copy)])


def test_hot_swap_replaces_a_filter_version(packages: Path, tmp_path: Path) -> None:
    import shutil

    pipeline = load(packages, alpha=10.0)
    newer = tmp_path / "alpha" / "1.1.0"
    shutil.copytree(packages / "alpha" / "1.0.0", newer)
    _edit(newer, version="1.1.0")
    pipeline.add(load_package(newer))
    [record] = [r for r in pipeline.score(articles(1)) if r.filter.name == "alpha" and r.article_id == "a0"]
    assert record.filter.version == "1.1.0"


def test_every_record_carries_the_package_threshold(packages: Path) -> None:
    """Probe-only packages hold a threshold too, and their records name it (not null)."""
    records = load(packages, alpha=10.0, beta=4.5).score(articles(4))
    beta = [r for r in records if r.filter.name == "beta" and r.stage is StageUsed.STAGE1]
    alpha = [r for r in records if r.filter.name == "alpha" and r.stage is StageUsed.STAGE1]
    assert beta and alpha
    assert {r.escalation_threshold for r in beta} == {4.5}
    assert {r.escalation_threshold for r in alpha} == {10.0}


def test_normalization_named_by_the_package_is_applied(packages: Path, tmp_path: Path) -> None:
    import shutil

    from scoring.aggregate import PercentileNormalizer

    copy = tmp_path / "beta" / "1.0.0"
    shutil.copytree(packages / "beta" / "1.0.0", copy)
    PercentileNormalizer(reference=tuple(float(v) for v in np.linspace(0.0, 10.0, 100))).save(copy / "norm.json")
    _edit(copy, normalization="norm.json")
    pipeline = Pipeline.load([load_package(copy)])
    records = [r for r in pipeline.score(articles(4)) if r.stage is StageUsed.STAGE1]
    assert records
    for r in records:
        assert r.normalized is not None and r.normalized.method == "percentile"
        # 100 evenly spaced points over 0-10: the percentile is about ten times the weighted average
        assert r.normalized.value == pytest.approx(np.floor(r.weighted_average * 9.9) + 1, abs=1.0)
