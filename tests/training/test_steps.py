"""The training steps embed exactly as serving does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from scoring.embedding import EmbeddingKey, embed, load_embedder
from scoring.package import load_package
from training.export import scaffold_config
from training.steps import Workspace
from training.steps import embed as train_embed

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("prefix", ["", "query: "])
def test_training_embeddings_equal_serving_embeddings(tmp_path: Path, prefix: str) -> None:
    body = scaffold_config("pfx", ["a", "b"], embedding_model="all-MiniLM-L6-v2", head_tokens=32, tail_tokens=8)
    body["stage1"]["text_prefix"] = prefix
    pkg_dir = tmp_path / "pfx" / "1.0.0"
    pkg_dir.mkdir(parents=True)
    (pkg_dir / "filter.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    package = load_package(pkg_dir)
    texts = ["Solar farms cooperative shares profits with the village. " * 10, "A short note."]
    work = Workspace(tmp_path / "work", cache_dir=tmp_path / "cache")
    trained_on = train_embed(package, texts, work)
    served = embed(load_embedder("all-MiniLM-L6-v2"), EmbeddingKey.of(package.config), texts, batch_size=8)
    np.testing.assert_allclose(trained_on, served, atol=1e-5)
    # from the on-disk cache the second time, still the same
    np.testing.assert_allclose(train_embed(package, texts, work), served, atol=1e-5)


def test_a_student_that_does_not_beat_the_probe_gets_no_articles(tmp_path: Path, tiny_gemma: Path) -> None:
    """The build chain compares the stages on the calibration split, records the decision in the package,
    and export holds the package to it."""
    from scoring.calibration import Calibration
    from training.dataset import infer_dimensions
    from training.export import StudentRoutingError, write_scaffold
    from training.steps import run_calibrate, run_export, run_prepare, run_probe, run_student, run_threshold
    from training.synth import SynthConfig, generate, write_jsonl
    from training.threshold import STAGE1_FINAL

    data = tmp_path / "synth.jsonl"
    write_jsonl(generate(SynthConfig(n=90, seed=5)), data)
    dims, _ = infer_dimensions(data)
    body = scaffold_config("gate", dims, embedding_model="all-MiniLM-L6-v2", head_tokens=32, tail_tokens=8,
                           student_base=str(tiny_gemma), student_max_length=48)
    path = write_scaffold(tmp_path / "pkgs" / "gate" / "1.0.0", body, "Score it.").path
    work = Workspace(tmp_path / "work", cache_dir=tmp_path / "cache")
    run_prepare(data, load_package(path), work, fractions=(0.5, 0.1, 0.2, 0.2), seed=0)
    run_probe(load_package(path), work, folds=2, max_epochs=30, seed=0)
    run_student(load_package(path), work, max_train=24, seed=0, epochs=1, batch_size=8, lora_r=4, lora_alpha=8)
    run_calibrate(load_package(path), work)
    fn_only = run_threshold(load_package(path), work, write=False)  # the false-negative rule alone
    choice = run_threshold(load_package(path), work, gate_student=True)
    routing = choice.routing
    assert routing is not None and fn_only.routing is None
    # A tiny random base with one epoch cannot beat the probe: stage 1 final for all.
    assert routing.decision == "stage1" and not routing.student_better
    assert routing.fn_threshold == fn_only.threshold and choice.threshold == STAGE1_FINAL
    cal = work.split("calibration", load_package(path).config)
    assert routing.n == len(cal)
    figures = routing.figures["test"]
    assert figures["threshold"]["routed_mae"] == figures["threshold"]["probe_mae"]
    assert figures["fn_threshold"]["escalated_share"] >= figures["threshold"]["escalated_share"]
    package = load_package(path)
    assert package.config.stage1.threshold == STAGE1_FINAL
    record = Calibration.load(package.file("calibration.json")).meta["routing"]
    assert record["decision"] == "stage1" and record["adapter"] == package.model_hashes["adapter"]
    assert record["probe"]["mae"] == pytest.approx(routing.probe["mae"])
    report = (work.reports / "threshold.md").read_text()
    assert "Student gating" in report and "stage 1 final for all" in report
    assert f"{routing.student['mae']:.3f}" in report and f"{routing.probe['mae']:.3f}" in report
    run_export(path, work, None)  # routing adjusted: exports
    # Forcing the student's routing is possible, but export then needs the same explicit flag.
    forced = run_threshold(load_package(path), work, gate_student=True, keep_student_routing=True)
    assert forced.routing is not None and forced.routing.decision == "kept"
    assert forced.threshold == fn_only.threshold < STAGE1_FINAL
    with pytest.raises(StudentRoutingError, match="not better than the probe"):
        run_export(path, work, None)
    assert run_export(path, work, None, keep_student_routing=True).package.config.stage1.threshold < STAGE1_FINAL
    # New maps invalidate the decision made with the old ones.
    run_calibrate(load_package(path), work)
    assert "routing" not in Calibration.load(load_package(path).file("calibration.json")).meta
