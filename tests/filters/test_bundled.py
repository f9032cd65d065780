"""The bundled production filter packages: valid configs, prompts that match them, resolution, hashes."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from filters import bundled_root, list_filters
from scoring.aggregate import Tier, aggregate
from scoring.article import Article
from scoring.exceptions import ModelFilesMissingError
from scoring.package import BUNDLED_ROOT, CONFIG_NAME, FilterPackage, load_package, resolve
from scoring.prefilter import Prefilter
from scoring.text import article_text

PRODUCTION = ["uplifting", "cultural_discovery", "sustainability_technology", "investment_risk"]
VERSION = "1.0.0"
MODEL_FILES = ["probe.safetensors", "probe.json", "adapter", "calibration.json"]
# Characters that would make a keyword a regex; keywords are matched literally as whole words.
_REGEX_CHARS = re.compile(r"[\\^$*+?{}\[\]|()]")


def _package(name: str) -> FilterPackage:
    return load_package(BUNDLED_ROOT / name / VERSION)


def _prompt_json(pkg: FilterPackage) -> dict[str, object]:
    text = pkg.file(pkg.config.oracle_prompt).read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)\n```", text, flags=re.DOTALL)
    assert len(blocks) == 1, f"{pkg.ref}: prompt.md needs exactly one ```json answer block"
    filled = blocks[0].replace("<0-10 number>", "5")
    parsed: dict[str, object] = json.loads(filled)
    return parsed


def test_registry_lists_the_production_filters() -> None:
    assert bundled_root() == BUNDLED_ROOT
    assert bundled_root().is_dir()
    listed = list_filters()
    for name in PRODUCTION:
        assert VERSION in listed[name]


@pytest.mark.parametrize("config_file", sorted(BUNDLED_ROOT.glob(f"*/*/{CONFIG_NAME}")),
                         ids=lambda p: f"{p.parent.parent.name}@{p.parent.name}")
def test_every_bundled_filter_yaml_validates(config_file: Path) -> None:
    pkg = load_package(config_file.parent)
    assert pkg.name == config_file.parent.parent.name
    assert pkg.version == config_file.parent.name


@pytest.mark.parametrize("name", PRODUCTION)
def test_weights_gatekeepers_and_tiers(name: str) -> None:
    config = _package(name).config
    assert 5 <= len(config.dimensions) <= 8
    assert math.isclose(sum(config.weights), 1.0, abs_tol=1e-9)
    assert all(d.weight > 0 for d in config.dimensions)
    assert config.gatekeepers, f"{name} needs at least one gatekeeper"
    for gate in config.gatekeepers:
        assert gate.dimension in config.dimension_names
        # A cap at or above HIGH could never change a tier: it would be a gatekeeper in name only.
        assert gate.cap < config.tiers.high
    # Borderline articles must reach stage 2, so escalation starts below the MEDIUM tier.
    assert config.stage1.threshold < config.tiers.medium


def test_required_weights_and_gatekeepers() -> None:
    up = _package("uplifting").config
    assert {d.name: d.weight for d in up.dimensions} == {
        "human_wellbeing": 0.25, "social_cohesion": 0.15, "justice_rights": 0.10,
        "evidence_level": 0.20, "benefit_distribution": 0.20, "change_durability": 0.10}
    assert [(g.dimension, g.minimum, g.cap) for g in up.gatekeepers] == [("evidence_level", 3.0, 3.0)]
    cd = _package("cultural_discovery").config
    assert {d.name: d.weight for d in cd.dimensions} == {
        "discovery_novelty": 0.25, "heritage_significance": 0.20, "cross_cultural_connection": 0.25,
        "human_resonance": 0.15, "evidence_quality": 0.15}
    assert [(g.dimension, g.minimum, g.cap) for g in cd.gatekeepers] == [("evidence_quality", 3.0, 4.0)]


def test_gatekeepers_cap_through_aggregation() -> None:
    up = _package("uplifting").config
    scores = dict.fromkeys(up.dimension_names, 10.0) | {"evidence_level": 2.9}
    result = aggregate(up, scores)
    assert result.gatekeeper_dimension == "evidence_level"
    assert (result.weighted_average, result.tier) == (3.0, Tier.LOW)
    assert aggregate(up, scores | {"evidence_level": 3.0}).tier == Tier.HIGH

    cd = _package("cultural_discovery").config
    result = aggregate(cd, dict.fromkeys(cd.dimension_names, 9.0) | {"evidence_quality": 1.0})
    assert (result.weighted_average, result.tier) == (4.0, Tier.MEDIUM)


@pytest.mark.parametrize("name", PRODUCTION)
def test_prompt_names_every_dimension_in_the_answer_format(name: str) -> None:
    pkg = _package(name)
    text = pkg.file(pkg.config.oracle_prompt).read_text(encoding="utf-8")
    answer = _prompt_json(pkg)
    assert list(answer) == [*pkg.config.dimension_names, "reasoning"]
    for dim in pkg.config.dimension_names:
        assert f"### {dim}\n" in text, f"{name}: no rubric section for {dim}"
        section = text.split(f"### {dim}\n", 1)[1].split("\n### ", 1)[0]
        for anchor in ("0-2", "3-4", "5-6", "7-8", "9-10"):
            assert f"**{anchor}**" in section, f"{name}.{dim}: rubric lacks the {anchor} anchor"
    assert "evidence, not the tone" in text


@pytest.mark.parametrize("name", PRODUCTION)
def test_prefilter_rules_are_well_formed(name: str) -> None:
    config = _package(name).config
    rules = config.prefilter
    assert rules.min_length >= 300
    assert rules.exclusions
    flags = 0 if rules.case_sensitive else re.IGNORECASE
    for pattern in rules.positive_patterns:
        re.compile(pattern, flags)
    for category in rules.exclusions:
        assert category.patterns or category.keywords, f"{name}.{category.name} can never match"
        for pattern in [*category.patterns, *category.overrides]:
            re.compile(pattern, flags)
        for keyword in category.keywords:
            assert keyword == keyword.strip() and not _REGEX_CHARS.search(keyword), keyword
        if category.min_positive is not None:
            assert rules.positive_patterns, f"{name}.{category.name}: min_positive without positive patterns"


# One real sentence per (filter, category, rule list) that the rules are meant to catch, so a broken
# escape or a typo in a pattern shows up as a failing match rather than as silently dead rule.
_SAMPLES = [
    ("uplifting", "sports_results", "patterns", "United beat City 3-1 on Saturday"),
    ("uplifting", "crime_blotter", "patterns", "Two men were arrested after the break-in"),
    ("uplifting", "crime_blotter", "overrides", "Neighbours rallied to rebuild the shop"),
    ("uplifting", "crime_blotter", "overrides", "He was exonerated after 20 years"),
    ("uplifting", "celebrity_gossip", "patterns", "The singer was spotted leaving a club"),
    ("cultural_discovery", "entertainment_charts", "patterns", "The film grossed $120 million worldwide"),
    ("cultural_discovery", "event_listings", "patterns", "Tickets from €15 at the door"),
    ("sustainability_technology", "consumer_product_review", "patterns", "Rating: 4.5/5 for the e-bike"),
    ("sustainability_technology", "crypto_speculation", "overrides", "the energy consumption of mining"),
    ("sustainability_technology", "weather_forecast", "patterns", "a 40% chance of rain on Sunday"),
    ("sustainability_technology", "weather_forecast", "overrides", "wind farms curtailed output"),
    ("investment_risk", "sports_results", "overrides", "the club went into administration"),
    ("investment_risk", "personal_finance_tips", "patterns", "7 ways to save on groceries"),
    ("investment_risk", "personal_finance_tips", "overrides", "credit card delinquencies rose"),
    ("investment_risk", "promotional_stock_picks", "patterns", "Top 5 stocks to buy this week"),
]


@pytest.mark.parametrize(("name", "category", "field", "text"), _SAMPLES)
def test_exclusion_rules_catch_what_they_are_for(name: str, category: str, field: str, text: str) -> None:
    rules = _package(name).config.prefilter
    cat = next(c for c in rules.exclusions if c.name == category)
    flags = 0 if rules.case_sensitive else re.IGNORECASE
    assert any(re.search(p, text, flags) for p in getattr(cat, field)), (name, category, field, text)


_FILLER = ("The council met on Monday to discuss next year's budget and the timetable for road works. "
           "Residents can read the minutes online. ") * 3

# (filter, article body, expected prefilter reason prefix or None for "passes"), run through the real
# Prefilter: each exclusion blocks what it is for and lets through what its overrides rescue.
_ARTICLES = [
    ("uplifting", "Police said two men were arrested after a burglary at the corner shop.",
     "excluded:crime_blotter"),
    ("uplifting", "Police said two men were arrested after a burglary at the corner shop. "
     "Neighbours rallied to rebuild it within a week.", None),
    ("uplifting", "Die Polizei hat zwei Tatverdächtige festgenommen.", "excluded:crime_blotter"),
    ("uplifting", "United beat City 3-1 and climb the league table after the final score.",
     "excluded:sports_results"),
    ("uplifting", "United beat City 3-1 in a charity match; the final score mattered less than the "
     "funds raised for the food bank.", None),
    ("uplifting", "The reality star was spotted leaving the red carpet party.", "excluded:celebrity_gossip"),
    ("uplifting", "The reality star, spotted at the red carpet gala, funded a clinic: volunteers now run it "
     "and 4,000 families gained access to clean water.", None),
    ("cultural_discovery", "Tickets on sale now, tickets from €15, book now for the summer concert.",
     "excluded:event_listings"),
    ("cultural_discovery", "Tickets on sale now, book now for the exhibition of artefacts excavated last year, "
     "dated by radiocarbon analysis to the Bronze Age.", None),
    ("sustainability_technology", "Memecoin mania: altcoin price prediction says dogecoin price will rally.",
     "excluded:crypto_speculation"),
    ("sustainability_technology", "Altcoin miners face scrutiny: the energy consumption of the airdrop "
     "craze rivals a small country.", None),
    ("investment_risk", "Top 5 stocks to buy now: this penny stock could double by summer.",
     "excluded:promotional_stock_picks"),
    ("investment_risk", "Ten ways to save on groceries, plus budgeting tips for families.",
     "excluded:personal_finance_tips"),
    ("investment_risk", "Budgeting tips and money-saving hacks abound, yet card delinquencies and household debt "
     "reached a record, the central bank said.", None),
]


@pytest.mark.parametrize(("name", "body", "expected"), _ARTICLES)
def test_prefilter_blocks_and_rescues(name: str, body: str, expected: str | None) -> None:
    pkg = _package(name)
    article = Article(id="a1", title="Report", content=f"{body} {_FILLER}")
    result = Prefilter(pkg.config.prefilter, filter_ref=pkg.ref).check(article, article_text(article))
    if expected is None:
        assert result.passed, result.reason
        # Only the rescue let it through: without overrides and min_positive the same text is blocked.
        rules = pkg.config.prefilter
        bare = rules.model_copy(update={"exclusions": [
            c.model_copy(update={"overrides": [], "min_positive": None}) for c in rules.exclusions]})
        assert not Prefilter(bare).check(article, article_text(article)).passed
    else:
        assert not result.passed
        assert result.reason is not None and result.reason.startswith(expected), result.reason


@pytest.mark.parametrize("name", PRODUCTION)
def test_prefilter_rejects_short_texts(name: str) -> None:
    pkg = _package(name)
    article = Article(id="a1", title="Brief", content="A very short item.")
    result = Prefilter(pkg.config.prefilter).check(article, article_text(article))
    assert not result.passed
    assert result.reason is not None and result.reason.startswith("too_short")


@pytest.mark.parametrize(("name", "text"), [
    ("uplifting", "Vrijwilligers openden een voedselbank"),
    ("cultural_discovery", "Die Ausgrabung brachte römische Münzen zutage"),
    ("sustainability_technology", "La pompe à chaleur réduit la consommation"),
    ("investment_risk", "El banco central anunció una subida de tipos"),
])
def test_positive_patterns_cover_other_languages(name: str, text: str) -> None:
    rules = _package(name).config.prefilter
    assert any(re.search(p, text, re.IGNORECASE) for p in rules.positive_patterns)


@pytest.mark.parametrize("name", PRODUCTION)
def test_production_model_settings(name: str) -> None:
    config = _package(name).config
    assert (config.preprocessing.head_tokens, config.preprocessing.tail_tokens) == (256, 256)
    assert config.stage1.embedding_model == "intfloat/multilingual-e5-small"
    assert (config.stage1.probe, config.stage1.probe_meta) == ("probe.safetensors", "probe.json")
    assert config.stage2 is not None
    assert config.stage2.base_model == "google/gemma-3-1b-pt"
    assert config.stage2.adapter == "adapter"
    assert config.preprocessing.head_tokens + config.preprocessing.tail_tokens <= config.stage2.max_length
    assert (config.calibration, config.oracle_prompt) == ("calibration.json", "prompt.md")


def test_resolve_by_name_version_and_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUXSCORE_FILTERS_PATH", raising=False)
    directory = BUNDLED_ROOT / "uplifting" / VERSION
    refs = ["uplifting", f"uplifting@{VERSION}", str(directory), str(directory / CONFIG_NAME)]
    packages = [resolve(ref) for ref in refs]
    assert {p.path for p in packages} == {directory.resolve()}
    assert {p.ref for p in packages} == {f"uplifting@{VERSION}"}
    assert len({p.package_hash for p in packages}) == 1


@pytest.mark.parametrize("name", PRODUCTION)
def test_untrained_models_fail_clearly(name: str) -> None:
    pkg = _package(name)
    with pytest.raises(ModelFilesMissingError) as info:
        pkg.require_files()
    assert sorted(info.value.missing) == sorted(MODEL_FILES)
    assert info.value.filter == pkg.ref
    for rel in MODEL_FILES:
        assert rel in str(info.value)


def _copy(pkg: FilterPackage, root: Path) -> Path:
    target = root / pkg.name / pkg.version
    target.mkdir(parents=True)
    for rel in [CONFIG_NAME, pkg.config.oracle_prompt]:
        shutil.copy2(pkg.file(rel), target / rel)
    return target


@pytest.mark.parametrize("name", PRODUCTION)
def test_package_hash_is_stable_and_tracks_weights(name: str, tmp_path: Path) -> None:
    original = _package(name)
    assert original.package_hash == _package(name).package_hash
    assert re.fullmatch(r"[0-9a-f]{16}", original.package_hash)

    copy_dir = _copy(original, tmp_path)
    # The hash depends on content, not on where the package lives.
    assert load_package(copy_dir).package_hash == original.package_hash

    # Move 0.05 of weight from the first dimension to the second: still valid, different behaviour.
    first, second = original.config.dimensions[:2]
    text = (copy_dir / CONFIG_NAME).read_text(encoding="utf-8")
    for dim, new in ((first, first.weight - 0.05), (second, second.weight + 0.05)):
        text, count = re.subn(rf"(- name: {dim.name}\n\s+weight: )[0-9.]+", rf"\g<1>{new:.2f}", text)
        assert count == 1
    (copy_dir / CONFIG_NAME).write_text(text, encoding="utf-8")
    edited = load_package(copy_dir)
    assert math.isclose(sum(edited.config.weights), 1.0, abs_tol=1e-9)
    assert edited.config.weights != original.config.weights
    assert edited.package_hash != original.package_hash


def test_package_hash_covers_the_oracle_prompt(tmp_path: Path) -> None:
    original = _package("uplifting")
    copy_dir = _copy(original, tmp_path)
    with (copy_dir / "prompt.md").open("a", encoding="utf-8") as fh:
        fh.write("\nOne more instruction.\n")
    assert load_package(copy_dir).package_hash != original.package_hash


# --- the bundled commerce detector ------------------------------------------------------------------------

def test_bundled_commerce_package_verifies_and_runs_its_classifier() -> None:
    from scoring.commerce import DEFAULT_PATH, CommerceDetector

    detector = CommerceDetector.load(DEFAULT_PATH, verify=True)  # what serving does: files match export.json
    manifest = json.loads((DEFAULT_PATH / "export.json").read_text(encoding="utf-8"))
    assert detector.mode == "classifier" and not detector.missing
    assert manifest["package_hash"] == detector.package_hash
    meta = json.loads((DEFAULT_PATH / detector.config.classifier_meta).read_text(encoding="utf-8"))
    assert meta["feature_names"] == detector.feature_names
    assert all("/" not in d.get("source", "") for d in meta["training_data"]), "file names, not paths"


def test_every_demo_package_blocks_commerce() -> None:
    for name in ("demo", "demo_tech"):
        assert load_package(BUNDLED_ROOT / name / "1.0.0").config.prefilter.block_commerce
