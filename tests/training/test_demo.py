"""``fluxscore train demo`` builds complete, loadable demo packages (small settings here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from scoring.article import parse_article
from scoring.package import load_package
from scoring.pipeline import Pipeline
from scoring.records import StageUsed
from scoring.settings import ScoringSettings
from training.demo import DEMO_FILTERS, build_demo

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_build_demo_end_to_end(tmp_path: Path) -> None:
    root = tmp_path / "filters"
    for name in DEMO_FILTERS:
        target = root / name / "1.0.0"
        target.mkdir(parents=True)
        for file in ("filter.yaml", "prompt.md"):
            shutil.copy(REPO / "filters" / name / "1.0.0" / file, target / file)
    (root / "commerce" / "v1").mkdir(parents=True)
    shutil.copy(REPO / "filters" / "commerce" / "v1" / "commerce.yaml", root / "commerce" / "v1")
    sample = tmp_path / "sample.jsonl"
    # Small settings: the full build (`fluxscore train demo`) takes minutes; this checks the wiring.
    result = build_demo(root, n_articles=200, seed=3, work_root=tmp_path / "work", cache_dir=tmp_path / "cache",
                        sample_path=sample, n_sample=30, student_max_train=16, probe_folds=2, probe_max_epochs=30)

    packages = [load_package(root / name / "1.0.0") for name in DEMO_FILTERS]
    for package in packages:
        assert package.missing_files() == []
        info = result.packages[package.name]
        assert info["package_hash"] == package.package_hash
        assert set(info["probe_validation_mae"]) == set(package.config.dimension_names)
        assert package.config.stage1.threshold == info["threshold"]["threshold"]
        assert (tmp_path / "work" / package.name / "reports" / "student.md").is_file()
        adapter = orjson.loads((package.path / "adapter" / "adapter_config.json").read_bytes())
        assert adapter["base_model_name_or_path"] == package.config.stage2.base_model  # type: ignore[union-attr]
    assert result.commerce is not None and (root / "commerce" / "v1" / "classifier.json").is_file()
    lines = sample.read_bytes().splitlines()
    assert len(lines) == 30 and all("truth" not in orjson.loads(line) for line in lines)

    # Both demo students (4 and 3 outputs) share one base in the serving pipeline.
    settings = ScoringSettings(commerce_package=root / "commerce" / "v1")
    pipeline = Pipeline.load(packages, settings=settings)
    records = pipeline.score([parse_article(line) for line in lines])
    assert {r.filter.name for r in records} == set(DEMO_FILTERS)
    assert len(records) == 2 * len(lines)
    assert pipeline.students is not None and sorted(pipeline.students.refs) == sorted(p.ref for p in packages)
    stages = {r.stage for r in records}
    assert StageUsed.STAGE1 in stages or StageUsed.STAGE2 in stages
