from pathlib import Path

import pytest
import yaml

from scoring.exceptions import ModelFilesMissingError, PackageError, PackageNotFoundError
from scoring.package import available, load_package, resolve, resolve_many

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
