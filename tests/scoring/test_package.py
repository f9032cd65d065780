import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from scoring.commerce import CommerceDetector
from scoring.exceptions import (
    ModelFilesMissingError,
    PackageError,
    PackageIntegrityError,
    PackageNotFoundError,
    PackagePathError,
    UnverifiedPackageError,
)
from scoring.package import (
    BUNDLED_ROOT,
    MANIFEST_NAME,
    Integrity,
    available,
    hash_paths,
    load_package,
    resolve,
    resolve_many,
)
from scoring.pipeline import Pipeline
from scoring.settings import ScoringSettings, SettingsError

from .conftest import filter_config


def write(pkg: Path, config: dict[str, object]) -> None:
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "filter.yaml").write_text(yaml.safe_dump(config))
    (pkg / "prompt.md").write_text("prompt")


def test_loads_and_names_missing_model_files(toy_package_dir: Path) -> None:
    pkg = load_package(toy_package_dir)
    assert pkg.ref == "toy@1.0.0"
    assert pkg.missing_files() == ["probe.safetensors", "probe.json"]
    with pytest.raises(ModelFilesMissingError, match=r"probe\.safetensors, probe\.json") as info:
        pkg.require_files()
    assert info.value.missing == ["probe.safetensors", "probe.json"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"dimensions": [{"name": "a", "weight": 0.5, "description": "d"}]}, "sum to 1"),
        ({"gatekeepers": [{"dimension": "nope", "minimum": 3, "cap": 3}]}, "unknown dimension"),
        ({"tiers": {"high": 3.0, "medium": 5.0}}, "must not exceed"),
        ({"unexpected": 1}, "Extra inputs"),
        ({"dimensions": [{"name": "a", "weight": 0.5, "description": "d"},
                         {"name": "a", "weight": 0.5, "description": "d"}]}, "repeat"),
    ],
)
def test_invalid_configs_are_clear(tmp_path: Path, change: dict[str, object], words: str) -> None:
    write(tmp_path / "toy" / "1.0.0", filter_config(**change))
    with pytest.raises(PackageError, match=words):
        load_package(tmp_path / "toy" / "1.0.0")


def test_directory_must_match_version(tmp_path: Path) -> None:
    write(tmp_path / "toy" / "2.0.0", filter_config())
    with pytest.raises(PackageError, match="does not match version"):
        load_package(tmp_path / "toy" / "2.0.0")


def test_hash_covers_config_and_named_files(toy_package_dir: Path) -> None:
    first = load_package(toy_package_dir).package_hash
    assert first == load_package(toy_package_dir).package_hash
    (toy_package_dir / "probe.json").write_text("{}")
    second = load_package(toy_package_dir).package_hash
    (toy_package_dir / "unrelated.txt").write_text("not named by the config")
    assert load_package(toy_package_dir).package_hash == second != first
    (toy_package_dir / "prompt.md").write_text("changed prompt")
    assert load_package(toy_package_dir).package_hash != second


def test_hash_does_not_depend_on_location(toy_package_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "elsewhere" / "toy" / "1.0.0"
    shutil.copytree(toy_package_dir, copy)
    assert load_package(copy).package_hash == load_package(toy_package_dir).package_hash


def test_resolve_by_name_version_and_path(tmp_path: Path) -> None:
    write(tmp_path / "toy" / "1.0.0", filter_config())
    write(tmp_path / "toy" / "1.10.0", filter_config(version="1.10.0"))
    write(tmp_path / "toy" / "1.2.0", filter_config(version="1.2.0"))
    roots = [tmp_path]
    assert [p.name for p in available(roots)["toy"]] == ["1.0.0", "1.2.0", "1.10.0"]
    assert resolve("toy", roots).version == "1.10.0"
    assert resolve("toy@1.2.0", roots).version == "1.2.0"
    assert resolve(str(tmp_path / "toy" / "1.0.0"), roots).version == "1.0.0"
    with pytest.raises(PackageNotFoundError, match="no version '9'"):
        resolve("toy@9", roots)
    with pytest.raises(PackageNotFoundError, match="no filter package named 'other'"):
        resolve("other", roots)
    with pytest.raises(PackageError, match="named twice"):
        resolve_many("toy,toy@1.0.0", roots)


def test_earlier_roots_shadow_later_ones(tmp_path: Path) -> None:
    write(tmp_path / "first" / "toy" / "1.0.0", filter_config(description="trained copy"))
    write(tmp_path / "second" / "toy" / "1.0.0", filter_config(description="bundled copy"))
    roots = [tmp_path / "first", tmp_path / "second"]
    assert resolve("toy", roots).config.description == "trained copy"
    assert resolve("toy@1.0.0", roots).config.description == "trained copy"


def test_directory_name_must_match_filter_name(tmp_path: Path) -> None:
    write(tmp_path / "other" / "1.0.0", filter_config())
    with pytest.raises(PackageError, match="holds filter 'toy', not 'other'"):
        resolve("other", [tmp_path])


@pytest.mark.parametrize(
    ("prefilter", "words"),
    [
        ({"exclusions": [{"name": "x", "patterns": ["(unclosed"]}]}, "invalid regular expression"),
        ({"exclusions": [{"name": "x"}]}, "neither patterns nor keywords"),
        ({"exclusions": [{"name": "x", "keywords": ["a"], "min_positive": 1}]}, "no positive_patterns"),
    ],
)
def test_prefilter_rules_validated_at_load(tmp_path: Path, prefilter: dict[str, object], words: str) -> None:
    write(tmp_path / "toy" / "1.0.0", filter_config(prefilter=prefilter))
    with pytest.raises(PackageError, match=words):
        load_package(tmp_path / "toy" / "1.0.0")


# --- integrity: model files against the hashes recorded at export ---------------------------------

DEMO = BUNDLED_ROOT / "demo" / "1.0.0"
CPU = ScoringSettings(device="cpu")


def demo_copy(tmp_path: Path, **ignore: bool) -> Path:
    target = tmp_path / "demo" / "1.0.0"
    shutil.copytree(DEMO, target, ignore=shutil.ignore_patterns(*ignore) if ignore else None)
    return target


def flip_middle_byte(file: Path) -> None:
    """Change the weights, not the safetensors header: the file still loads, with other numbers."""
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


def test_bundled_packages_match_their_manifests() -> None:
    for name in ("demo", "demo_tech"):
        package = load_package(BUNDLED_ROOT / name / "1.0.0")
        assert package.integrity() == Integrity("ok"), name
        recorded = json.loads((package.path / MANIFEST_NAME).read_text())
        assert recorded["package_hash"] == package.package_hash
        assert set(recorded["file_sha256"]) >= {"filter.yaml", "probe.safetensors", "adapter/adapter_model.safetensors"}
    CommerceDetector.load(verify=True)


def test_tampered_probe_weights_are_refused(tmp_path: Path) -> None:
    copy = demo_copy(tmp_path)
    flip_middle_byte(copy / "probe.safetensors")
    with pytest.raises(PackageIntegrityError, match=r"demo@1\.0\.0.*probe\.safetensors has sha256 [0-9a-f]{64}, "
                                                    r"export recorded [0-9a-f]{64}") as info:
        Pipeline.load([load_package(copy)], settings=CPU, commerce=False)
    assert info.value.files == ["probe.safetensors"]
    assert load_package(copy).integrity().label == "TAMPERED: probe.safetensors"


def test_tampering_after_the_package_was_read_is_still_caught(tmp_path: Path) -> None:
    copy = demo_copy(tmp_path)
    package = load_package(copy)
    assert package.package_hash  # hashed before the change: verification must read the files again
    flip_middle_byte(copy / "adapter" / "adapter_model.safetensors")
    with pytest.raises(PackageIntegrityError, match=r"adapter/adapter_model\.safetensors has sha256"):
        package.verify()


@pytest.mark.integration
def test_the_development_override_serves_a_tampered_package(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    copy = demo_copy(tmp_path)
    flip_middle_byte(copy / "probe.safetensors")
    settings = ScoringSettings.from_env({"FLUXSCORE_ALLOW_UNVERIFIED_MODELS": "1", "FLUXSCORE_DEVICE": "cpu"})
    with caplog.at_level(logging.WARNING, logger="scoring.package"):
        pipeline = Pipeline.load([load_package(copy)], settings=settings, commerce=False, students=False)
    assert pipeline.refs == ["demo@1.0.0"]
    assert any("demo@1.0.0" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize(("raw", "allowed"), [("1", True), ("true", True), ("TRUE", True), ("0", False),
                                               ("false", False), ("", False)])
def test_override_setting_from_env(raw: str, allowed: bool) -> None:
    assert ScoringSettings.from_env({"FLUXSCORE_ALLOW_UNVERIFIED_MODELS": raw}).allow_unverified_models is allowed
    assert ScoringSettings.from_env({}).allow_unverified_models is False


def test_override_setting_rejects_other_values() -> None:
    with pytest.raises(SettingsError, match="FLUXSCORE_ALLOW_UNVERIFIED_MODELS"):
        ScoringSettings.from_env({"FLUXSCORE_ALLOW_UNVERIFIED_MODELS": "yes please"})


def test_package_without_manifest_is_refused(tmp_path: Path) -> None:
    copy = demo_copy(tmp_path, **{MANIFEST_NAME: True})
    with pytest.raises(UnverifiedPackageError, match=r"demo@1\.0\.0 .*not exported with file hashes"):
        Pipeline.load([load_package(copy)], settings=CPU, commerce=False)
    # An export.json from before per-file hashes were recorded vouches for nothing either.
    (copy / MANIFEST_NAME).write_text(json.dumps({"name": "demo", "version": "1.0.0", "package_hash": "x"}))
    assert load_package(copy).integrity().status == "unverified"
    with pytest.raises(UnverifiedPackageError):
        load_package(copy).verify()


def test_untrained_package_still_names_its_missing_files(toy_package_dir: Path) -> None:
    with pytest.raises(ModelFilesMissingError, match=r"probe\.safetensors, probe\.json"):
        load_package(toy_package_dir).verify()


def test_added_and_removed_files_are_refused(tmp_path: Path) -> None:
    copy = demo_copy(tmp_path)
    (copy / "adapter" / "extra.safetensors").write_bytes(b"not recorded at export")
    with pytest.raises(PackageIntegrityError, match=r"adapter/extra\.safetensors .*not among the files export"):
        load_package(copy).verify()
    (copy / "adapter" / "extra.safetensors").unlink()
    (copy / "adapter" / "adapter_config.json").unlink()
    with pytest.raises(PackageIntegrityError, match=r"adapter/adapter_config\.json is missing") as info:
        load_package(copy).verify()
    assert info.value.files == ["adapter/adapter_config.json"]


def test_edited_config_is_refused(tmp_path: Path) -> None:
    copy = demo_copy(tmp_path)
    text = (copy / "filter.yaml").read_text()
    (copy / "filter.yaml").write_text(text.replace("threshold: 2.4528", "threshold: 9.0"))
    with pytest.raises(PackageIntegrityError, match=r"filter\.yaml has sha256"):
        load_package(copy).verify()


def test_tampered_commerce_classifier_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "commerce"
    shutil.copytree(BUNDLED_ROOT / "commerce" / "v1", copy)
    flip_middle_byte(copy / "classifier.safetensors")
    with pytest.raises(PackageIntegrityError, match=r"commerce@1 .*classifier\.safetensors has sha256"):
        Pipeline.load([], settings=ScoringSettings(device="cpu", commerce_package=copy))
    CommerceDetector.load(copy, verify=True, allow_unverified=True)
    (copy / MANIFEST_NAME).unlink()
    with pytest.raises(UnverifiedPackageError, match="commerce@1"):
        CommerceDetector.load(copy, verify=True)


# --- confinement: every path a package names stays inside it ---------------------------------------

def test_parent_paths_are_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.safetensors").write_bytes(b"weights from elsewhere")
    write(tmp_path / "toy" / "1.0.0", filter_config(stage1={**filter_config()["stage1"],
                                                            "probe": "../../outside.safetensors"}))
    with pytest.raises(PackagePathError, match=r"stage1\.probe of toy@1\.0\.0 \('\.\./\.\./outside\.safetensors'\) "
                                               r"resolves to .*outside the package directory") as info:
        load_package(tmp_path / "toy" / "1.0.0")
    assert info.value.field == "stage1.probe"


def test_absolute_paths_are_refused(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt-elsewhere.md"
    prompt.write_text("prompt")
    write(tmp_path / "toy" / "1.0.0", filter_config(oracle_prompt=str(prompt)))
    with pytest.raises(PackagePathError, match=r"oracle_prompt of toy@1\.0\.0 is an absolute path"):
        load_package(tmp_path / "toy" / "1.0.0")
    with pytest.raises(PackagePathError):
        hash_paths(tmp_path / "toy" / "1.0.0", [str(prompt)])


def test_symlinks_out_of_the_package_are_refused(toy_package_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (toy_package_dir / "probe.json").symlink_to(secret)
    with pytest.raises(PackagePathError, match=r"stage1\.probe_meta of toy@1\.0\.0 .*outside the package"):
        load_package(toy_package_dir)
    with pytest.raises(PackagePathError):
        hash_paths(toy_package_dir, ["probe.json"])


def test_symlinks_under_a_named_directory_are_refused(tmp_path: Path) -> None:
    copy = demo_copy(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (copy / "adapter" / "more").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PackagePathError, match=r"adapter/more under stage2\.adapter of demo@1\.0\.0 links to"):
        load_package(copy)
    with pytest.raises(PackagePathError):
        hash_paths(copy, ["adapter"])


def test_symlinks_inside_the_package_are_followed(toy_package_dir: Path) -> None:
    before = load_package(toy_package_dir)
    (toy_package_dir / "prompt-v1.md").write_text((toy_package_dir / "prompt.md").read_text())
    (toy_package_dir / "prompt.md").unlink()
    (toy_package_dir / "prompt.md").symlink_to("prompt-v1.md")
    assert load_package(toy_package_dir).package_hash == before.package_hash


def test_commerce_paths_are_confined(tmp_path: Path) -> None:
    copy = tmp_path / "commerce"
    shutil.copytree(BUNDLED_ROOT / "commerce" / "v1", copy)
    text = (copy / "commerce.yaml").read_text()
    (copy / "commerce.yaml").write_text(text + "\nclassifier: /etc/hostname\n")
    with pytest.raises(PackagePathError, match=r"classifier of commerce@1 is an absolute path"):
        CommerceDetector.load(copy)
