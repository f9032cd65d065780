"""Export writes the drift reference profile into the package, hashed with it."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from scoring.drift import PROFILE_NAME, ReferenceProfile
from scoring.package import BUNDLED_ROOT, load_package
from training.export import export_package, problems

pytestmark = pytest.mark.integration  # scores with the demo package's real models


def _articles_file(path: Path, n: int) -> Path:
    from training.synth import SynthConfig, generate

    # Labelled records, as the calibration split holds them: export reads them as articles.
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in generate(SynthConfig(n=n, seed=5))))
    return path


def test_export_writes_a_profile_named_in_the_config_and_hashed(tmp_path: Path) -> None:
    package_dir = tmp_path / "demo" / "1.0.0"
    shutil.copytree(BUNDLED_ROOT / "demo" / "1.0.0", package_dir)
    # Start from a package without a profile, as a fresh `train build` leaves it.
    config = package_dir / "filter.yaml"
    config.write_text(config.read_text().split("\ndrift:")[0] + "\n")
    (package_dir / PROFILE_NAME).unlink()
    before = config.read_text()
    source = _articles_file(tmp_path / "calibration.jsonl", 40)

    exported = export_package(package_dir, reference=source)
    text = config.read_text()
    assert text.startswith(before.rstrip("\n")), "every other line (comments included) is kept"
    package = load_package(package_dir)
    assert package.config.drift.reference == PROFILE_NAME and PROFILE_NAME in package.hashed_paths
    package.verify()  # the manifest covers the profile
    profile = ReferenceProfile.load(package_dir / PROFILE_NAME)
    assert profile.filter == "demo" and profile.source == "calibration.jsonl (40 articles)"
    assert len(profile.rows) == 40 and {"weighted_average", "stage", "language", "text_chars"} <= set(profile.rows[0])
    assert profile.embeddings is not None and profile.embeddings.rows > 20
    assert profile.embeddings.model == package.config.stage1.embedding_model

    first = (package_dir / PROFILE_NAME).read_bytes()
    again = export_package(package_dir, reference=source)
    assert (package_dir / PROFILE_NAME).read_bytes() == first and again.package_hash == exported.package_hash, \
        "the same data gives the same profile and package hash"
    assert config.read_text() == text, "the drift section is written once"

    (package_dir / PROFILE_NAME).write_bytes(first.replace(b'"filter": "demo"', b'"filter": "other"'))
    assert any("profile of 'other'" in p for p in problems(load_package(package_dir)))
