from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from scoring.article import Article
from scoring.commerce import (
    CLASSIFIER_FORMAT,
    CONFIG_NAME,
    DEFAULT_PATH,
    CommerceDetector,
    CommerceEvidence,
    expand_defines,
)
from scoring.exceptions import ModelLoadError, PackageError, PackageNotFoundError, ScoringError
from scoring.package import BUNDLED_ROOT
from scoring.text import article_text


@pytest.fixture(scope="module")
def detector() -> CommerceDetector:
    return CommerceDetector.load()


def art(title: str, content: str = "", url: str | None = None) -> Article:
    return Article(id="c1", title=title, content=content, url=url)


def evidence(detector: CommerceDetector, title: str, content: str = "", url: str | None = None) -> CommerceEvidence:
    a = art(title, content, url)
    return detector.evidence(a, article_text(a))


def groups_hit(ev: CommerceEvidence) -> set[str]:
    return {r.split(":", 1)[0] for r in ev.reasons}


# --- config and loading --------------------------------------------------------------------------

def test_bundled_detector_loads_rules_only_when_classifier_absent(detector: CommerceDetector) -> None:
    assert detector.path == (Path(BUNDLED_ROOT) / "commerce" / "v1").resolve() == DEFAULT_PATH.resolve()
    assert detector.embedding_model == "sentence-transformers/all-MiniLM-L6-v2"
    if not (detector.path / detector.config.classifier).exists():
        assert detector.mode == "rules_only"
        assert detector.missing
    assert len(detector.package_hash) == 16
    int(detector.package_hash, 16)


def test_bundled_rules_cover_six_languages(detector: CommerceDetector) -> None:
    languages: set[str] = set()
    for group in detector.config.groups:
        languages |= group.languages
    assert {"en", "nl", "de", "fr", "es", "pt"} <= languages


def test_rules_only_is_stated_in_reason(tmp_path: Path) -> None:
    shutil.copy(DEFAULT_PATH / CONFIG_NAME, tmp_path / CONFIG_NAME)
    det = CommerceDetector.load(tmp_path)
    assert det.mode == "rules_only"
    ev = evidence(det, "Council approves the school budget", "The vote passed on Tuesday.")
    [result] = det.classify([ev], np.zeros((1, 384)))
    assert not result.blocked
    assert result.reason is not None
    assert "rules_only" in result.reason and "classifier.safetensors" in result.reason


def test_missing_config_raises(tmp_path: Path) -> None:
    with pytest.raises(PackageNotFoundError):
        CommerceDetector.load(tmp_path)


def _write_config(directory: Path, **changes: Any) -> Path:
    raw = yaml.safe_load((DEFAULT_PATH / CONFIG_NAME).read_text(encoding="utf-8"))
    raw.update(changes)
    (directory / CONFIG_NAME).write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return directory


def test_invalid_regex_names_group_and_pattern(tmp_path: Path) -> None:
    group = {"name": "broken", "weight": 0.5, "scale": 1.0, "patterns": {"de": ["(unclosed"]}}
    _write_config(tmp_path, groups=[group])
    with pytest.raises(PackageError, match=r"'broken' \(de\).*\(unclosed"):
        CommerceDetector.load(tmp_path)


def test_schema_errors_are_package_errors(tmp_path: Path) -> None:
    _write_config(tmp_path, threshold=1.5)
    with pytest.raises(PackageError, match="threshold"):
        CommerceDetector.load(tmp_path)
    _write_config(tmp_path, threshold=0.5, groups=[{"name": "x", "weight": 0.5, "scale": 1.0,
                                                    "keywords": {"english": ["a"]}}])
    with pytest.raises(PackageError, match="language key"):
        CommerceDetector.load(tmp_path)
    _write_config(tmp_path, groups=[{"name": "x", "weight": 0.5, "scale": 1.0}])
    with pytest.raises(PackageError, match="no patterns and no keywords"):
        CommerceDetector.load(tmp_path)


def test_defines_expand_and_unknown_ones_fail() -> None:
    defines = {"A": "a+", "B": "{{A}}b"}
    assert expand_defines("x{{B}}", defines, where="t") == "xa+b"
    with pytest.raises(PackageError, match="undefined fragment"):
        expand_defines("{{C}}", defines, where="t")
    with pytest.raises(PackageError, match="too deep"):
        expand_defines("{{L}}", {"L": "{{L}}"}, where="t")


# --- rules, per type and language --------------------------------------------------------------

@pytest.mark.parametrize("price", [
    "$19.99", "19,99 €", "€ 19,99", "EUR 19.99", "£249", "CHF 49.–", "R$ 4.999,00", "1.299,00 €",
    "US$ 30", "¥2,980", "€ 129,-", "45 euros", "99 zł", "USD 1,299.00",
])
def test_price_formats(detector: CommerceDetector, price: str) -> None:
    ev = evidence(detector, f"Now only {price} for this blender")
    assert any(r.startswith("price:1(") for r in ev.reasons), ev.reasons


@pytest.mark.parametrize("amount", ["$9.8 billion", "€3 bn", "£2.5 million", "5 Mrd. Euro", "R$ 5 bilhões"])
def test_economic_aggregates_are_not_prices(detector: CommerceDetector, amount: str) -> None:
    ev = evidence(detector, f"Spending reached {amount} last year")
    assert "price" not in groups_hit(ev), ev.reasons


@pytest.mark.parametrize(("group", "text"), [
    ("discount", "Headphones -30% today"),
    ("discount", "Get 30% off all jackets"),
    ("discount", "Save $20 on the kettle"),
    ("discount", "Was $99, now $59"),
    ("discount", "Lowest price ever on the Kindle"),
    ("sale_event", "Black Friday starts early this year"),
    ("deal", "Deal of the day: a smart speaker"),
    ("coupon", "Use code SAVE20 at checkout"),
    ("coupon", "Our promo code works until Sunday"),
    ("call_to_action", "Add to cart before it sells out"),
    ("call_to_action", "Buy now at Amazon"),
    ("affiliate", "This post contains affiliate links"),
    ("affiliate", "We may earn a commission when you buy through links"),
    ("sponsored_label", "Sponsored content: a new way to travel"),
    ("sponsored_label", "Paid partnership with a coffee brand"),
    ("sponsored_label", "An advertorial about watches"),
    ("shopping_guide", "The best laptops under $500"),
    ("shopping_guide", "Our holiday gift guide"),
    ("comparison", "iPhone 15 vs Galaxy S24: which one should you buy"),
    ("comparison", "A price comparison of robot vacuums"),
    ("listing", "Free shipping and only 3 left in stock"),
    # nl
    ("deal", "Deze aanbieding met korting"),
    ("discount", "Nu 40% korting op airfryers"),
    ("call_to_action", "Nu kopen bij de webshop"),
    ("sponsored_label", "Gesponsorde inhoud over reizen"),
    ("affiliate", "Dit artikel bevat affiliate links"),
    ("coupon", "Met deze kortingscode bespaar je"),
    # de
    ("deal", "Das beste Angebot mit Rabatt"),
    ("call_to_action", "Jetzt kaufen und sparen"),
    ("sponsored_label", "Anzeige\nDie neue Kaffeemaschine"),
    ("sponsored_label", "[Werbung] Die neue Kaffeemaschine"),
    ("affiliate", "Alle Partnerlinks sind markiert"),
    ("discount", "Heute 33 % Rabatt auf Fernseher"),
    # fr
    ("deal", "Un bon plan pour la PS5 en promo"),
    ("sale_event", "Les soldes d'hiver commencent"),
    ("call_to_action", "Acheter maintenant sur le site"),
    ("affiliate", "Cet article contient un lien affilié"),
    ("sponsored_label", "Contenu sponsorisé par une marque"),
    # es
    ("deal", "Oferta con descuento: un chollo"),
    ("call_to_action", "Comprar ahora en la tienda"),
    ("affiliate", "Incluye un enlace de afiliado"),
    ("sponsored_label", "Contenido patrocinado por la marca"),
    ("discount", "Ahora con 25% de descuento"),
    # pt
    ("deal", "Promoção com desconto imperdível"),
    ("call_to_action", "Compre agora na loja"),
    ("affiliate", "Este post tem link de afiliado"),
    ("sponsored_label", "Conteúdo patrocinado pela marca"),
    ("coupon", "Use o cupom de desconto"),
])
def test_rule_groups_fire(detector: CommerceDetector, group: str, text: str) -> None:
    title, _, content = text.partition("\n")
    assert group in groups_hit(evidence(detector, title, content)), text


def test_commerce_url_group(detector: CommerceDetector) -> None:
    ev = evidence(detector, "Headphones", url="https://example.com/deals/headphones-2025")
    assert "commerce_url" in groups_hit(ev)
    assert "commerce_url" not in groups_hit(evidence(detector, "Headphones", url="https://example.com/news/a"))


DEALS = {
    "en": ("Apple AirPods Pro drop to $189 at Amazon",
           "Save $60: the AirPods Pro are 24% off right now, their lowest price ever. Buy now at Amazon. "
           "We may earn a commission from links on this page."),
    "nl": ("Philips Airfryer met 40% korting",
           "Deze aanbieding is alleen vandaag: van € 129,99 voor € 79,99. Nu kopen? Gratis verzending. "
           "Dit artikel bevat affiliate links."),
    "de": ("Anzeige: Samsung Galaxy S24 zum Tiefstpreis",
           "Jetzt kaufen: Das Galaxy S24 gibt es bei Amazon für 599,99 € statt 899 € – 33 % Rabatt. "
           "Mit * markierte Links sind Partnerlinks."),
    "fr": ("Bon plan : la PS5 à 399 €",
           "Profitez des soldes : la PS5 passe à 399 € au lieu de 549 €, soit 27 % de réduction. "
           "Ajouter au panier. Cet article contient des liens affiliés."),
    "es": ("Chollo: Xiaomi Redmi Note 13 por 149 euros",
           "Oferta limitada con 25% de descuento. Comprar ahora en Amazon. Este artículo contiene enlaces "
           "de afiliado."),
    "pt": ("Promoção: iPhone 15 por R$ 4.999",
           "Desconto de 20% na promoção relâmpago. Use o cupom de desconto. Compre agora! Este post contém "
           "links de afiliado."),
}


@pytest.mark.parametrize("lang", sorted(DEALS))
def test_deal_posts_block_on_rules_alone(detector: CommerceDetector, lang: str) -> None:
    ev = evidence(detector, *DEALS[lang])
    verdict = detector.early_verdict(ev)
    assert verdict is not None and verdict.blocked, ev
    assert verdict.reason is not None and verdict.reason.startswith("commerce:rules:")
    assert "affiliate" in verdict.reason or "coupon" in verdict.reason
    assert verdict.score == pytest.approx(ev.rule_score)


# --- false-positive guards -----------------------------------------------------------------------

NEWS = {
    "inflation": ("Inflation rises to 3.2% as grocery prices climb",
                  "Consumer prices rose 3.2% in March from a year earlier, the Labor Department said on "
                  "Wednesday. A dozen eggs now costs $4.50, up from $2.99 last year, while gasoline averaged "
                  "$3.60 a gallon. Economists expect the Federal Reserve to hold rates steady. Retail sales "
                  "grew 0.4% and Walmart reported strong quarterly results as shoppers sought bargains."),
    "retail": ("Black Friday online sales hit record $9.8 billion",
               "Shoppers spent a record $9.8 billion online on Black Friday, Adobe Analytics said. Discounts "
               "peaked at 30% off on electronics, while toys were discounted up to 25%. Retailers such as "
               "Target and Best Buy reported heavy traffic. Analysts warned that consumer debt keeps rising. "
               "The National Retail Federation expects holiday spending to grow 3% this season."),
    "stocks": ("Nvidia shares slide 4% as chip stocks retreat",
               "Nvidia fell 4.1% to $118.20 on Tuesday, wiping about $120 billion off its market value. The "
               "Nasdaq lost -1.2% while the Dow slipped 0.3%. Investors weighed new export rules and a trade "
               "deal between Washington and Beijing that analysts said could cut demand."),
    "police_de": ("Polizei: Anzeige gegen Unbekannt erstattet",
                  "Nach dem Einbruch in Köln hat die Polizei Anzeige gegen Unbekannt erstattet. Die Regierung "
                  "legte ein neues Angebot im Tarifstreit vor. Die Inflation lag bei 2,4 Prozent, Butter "
                  "kostet 2,29 Euro."),
    "senate": ("Senate passes bill sponsored by two senators",
               "The bill, sponsored by senators from both parties, would cap insulin at $35 a month. The "
               "trade deal talks continue next week, officials said."),
    "economia_es": ("La inflación baja al 2,8% en España",
                    "El precio de la luz bajó y el aceite de oliva cuesta 8 euros el litro. El Gobierno "
                    "presentó una oferta a los sindicatos. El Banco de España prevé un crecimiento del 2%."),
}


@pytest.mark.parametrize("name", sorted(NEWS))
def test_news_about_prices_and_retail_passes_rules(detector: CommerceDetector, name: str) -> None:
    ev = evidence(detector, *NEWS[name])
    assert detector.early_verdict(ev) is None, ev
    [result] = CommerceDetector(detector.config, detector.path).classify([ev], np.zeros((1, 384)))
    assert not result.blocked, (name, ev)
    assert ev.rule_score < 0.4
    assert "deal" not in groups_hit(ev) or name not in {"stocks", "senate"}  # "trade deal"


def test_one_price_in_a_long_story_scores_low(detector: CommerceDetector) -> None:
    paragraph = ("The regional parliament debated the new transport plan for several hours, hearing from "
                 "commuters, unions and engineers about delays on the northern line. ")
    short = evidence(detector, "Tickets cost €4.50", "")
    long = evidence(detector, "Transport plan debated", paragraph * 20 + "A single ticket costs €4.50.")
    assert "price" in groups_hit(long)
    assert long.rule_score < short.rule_score
    assert long.rule_score < 0.05


def test_labels_are_decisive_whatever_the_length(detector: CommerceDetector) -> None:
    filler = "Our reviewer tested the espresso machine for three weeks in a small kitchen. " * 30
    short = evidence(detector, "Espresso machine review", "This post contains affiliate links.")
    long = evidence(detector, "Espresso machine review", filler + "This post contains affiliate links.")
    assert long.rule_score == pytest.approx(short.rule_score, abs=1e-9)


# --- evidence contract ---------------------------------------------------------------------------

def test_evidence_is_frozen_and_json_roundtrips(detector: CommerceDetector) -> None:
    ev = evidence(detector, *DEALS["en"])
    assert len(ev.features) == len(detector.feature_names)
    assert ev.features[-1] == ev.rule_score
    assert all(0.0 <= f <= 1.0 for f in ev.features)
    again = CommerceEvidence.model_validate_json(ev.model_dump_json())
    assert again == ev
    with pytest.raises(ValueError, match="frozen"):
        ev.rule_score = 0.0  # type: ignore[misc]


def test_reasons_carry_counts_and_samples(detector: CommerceDetector) -> None:
    ev = evidence(detector, *DEALS["en"])
    assert "price:2($189,$60)" in ev.reasons
    assert any(r.startswith("affiliate:1(We may earn a commission") for r in ev.reasons)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(title=st.text(max_size=80), content=st.text(max_size=500), url=st.none() | st.text(max_size=50))
def test_evidence_never_raises(detector: CommerceDetector, title: str, content: str, url: str | None) -> None:
    ev = evidence(detector, title, content, url)
    assert 0.0 <= ev.rule_score <= 1.0
    assert len(ev.features) == len(detector.feature_names)


# --- classifier at serving -----------------------------------------------------------------------

def _install_classifier(directory: Path, det: CommerceDetector, coef: np.ndarray, intercept: float,
                        **meta_changes: Any) -> None:
    save_file({"coef": coef.astype(np.float32), "intercept": np.asarray([intercept], dtype=np.float32)},
              str(directory / "classifier.safetensors"))
    meta = {"format": CLASSIFIER_FORMAT, "embedding_model": det.embedding_model, "embedding_dim": 4,
            "feature_names": det.feature_names, "normalize_embedding": True, **meta_changes}
    (directory / "classifier.json").write_text(json.dumps(meta), encoding="utf-8")


@pytest.fixture
def toy_dir(tmp_path: Path, detector: CommerceDetector) -> Path:
    shutil.copy(DEFAULT_PATH / CONFIG_NAME, tmp_path / CONFIG_NAME)
    n = 4 + len(detector.feature_names)
    coef = np.zeros(n)
    coef[0] = 4.0  # the first embedding axis alone decides
    _install_classifier(tmp_path, detector, coef, -1.0)
    return tmp_path


def test_classify_is_logistic_over_normalised_embedding(toy_dir: Path) -> None:
    det = CommerceDetector.load(toy_dir)
    assert det.mode == "classifier" and det.missing == []
    ev = [evidence(det, "Council meets", "Budget vote."), evidence(det, "Library reopens", "Good news.")]
    emb = np.array([[10.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])  # rows normalise to e0 and e1
    results = det.classify(ev, emb)
    p0, p1 = 1 / (1 + math.exp(-3.0)), 1 / (1 + math.exp(1.0))
    assert results[0].score == pytest.approx(p0, abs=1e-5) and results[0].blocked
    assert results[1].score == pytest.approx(p1, abs=1e-5) and not results[1].blocked
    assert results[0].reason is not None and results[0].reason.startswith("commerce:classifier:0.95>=0.5")


def test_classify_keeps_early_verdicts_and_order(toy_dir: Path) -> None:
    det = CommerceDetector.load(toy_dir)
    deal = evidence(det, *DEALS["de"])
    news = evidence(det, "Council meets", "Budget vote.")
    results = det.classify([news, deal], np.zeros((2, 4)))
    assert results[1] == det.early_verdict(deal)
    assert results[0].reason is not None and results[0].reason.startswith("commerce:classifier:")
    assert det.classify([], np.zeros((0, 4))) == []


def test_classify_rejects_wrong_shapes(toy_dir: Path) -> None:
    det = CommerceDetector.load(toy_dir)
    ev = evidence(det, "Council meets")
    with pytest.raises(ScoringError, match=r"shape \(1, 4\)"):
        det.classify([ev], np.zeros((1, 384)))
    with pytest.raises(ScoringError, match="features"):
        det.classify([CommerceEvidence(rule_score=0.0, features=[0.0])], np.zeros((1, 4)))


def test_classifier_trained_on_another_encoder_is_refused(toy_dir: Path, detector: CommerceDetector) -> None:
    _install_classifier(toy_dir, detector, np.zeros(4 + len(detector.feature_names)), 0.0,
                        embedding_model="other/model")
    with pytest.raises(PackageError, match="other/model"):
        CommerceDetector.load(toy_dir)


def test_classifier_with_other_rule_groups_is_refused(toy_dir: Path, detector: CommerceDetector) -> None:
    _install_classifier(toy_dir, detector, np.zeros(5), 0.0, feature_names=["rule:x"])
    with pytest.raises(PackageError, match="retrain"):
        CommerceDetector.load(toy_dir)


def test_classifier_with_wrong_weight_count_fails_to_load(toy_dir: Path, detector: CommerceDetector) -> None:
    _install_classifier(toy_dir, detector, np.zeros(3), 0.0)
    with pytest.raises(ModelLoadError, match="expected"):
        CommerceDetector.load(toy_dir)
    (toy_dir / "classifier.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError):
        CommerceDetector.load(toy_dir)


def test_half_installed_classifier_runs_rules_only_and_says_so(toy_dir: Path) -> None:
    (toy_dir / "classifier.json").unlink()
    det = CommerceDetector.load(toy_dir)
    assert det.mode == "rules_only" and det.missing == ["classifier.json"]
    [result] = det.classify([evidence(det, "Council meets")], np.zeros((1, 4)))
    assert result.reason is not None and "classifier missing: classifier.json" in result.reason


def test_package_hash_covers_classifier_files(toy_dir: Path, detector: CommerceDetector) -> None:
    before = CommerceDetector.load(toy_dir).package_hash
    _install_classifier(toy_dir, detector, np.ones(4 + len(detector.feature_names)), 0.0)
    assert CommerceDetector.load(toy_dir).package_hash != before
