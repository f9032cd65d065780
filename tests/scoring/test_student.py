"""StudentPool against the filter's own peft model, on a tiny random Gemma-3 and on real MiniLM (BERT)."""

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from scoring.exceptions import ModelFilesMissingError, ModelLoadError, PackageError
from scoring.package import load_package
from scoring.student import StudentPool
from scoring.text import encode_head_tail
from tests.conftest import student_package, toy_texts, train_tiny_student

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma_packages(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two filters on the same tiny Gemma base: 3 and 5 dimensions."""
    root = tmp_path_factory.mktemp("filters")
    work = tmp_path_factory.mktemp("adapters")
    three = train_tiny_student(tiny_gemma, ["a", "b", "c"], work / "three", seed=1)
    five = train_tiny_student(tiny_gemma, ["p", "q", "r", "s", "t"], work / "five", seed=2,
                              target_modules=("q_proj", "v_proj"), lora_r=2)
    return {"three": student_package(root, "three", ["a", "b", "c"], base=str(tiny_gemma), adapter=three),
            "five": student_package(root, "five", ["p", "q", "r", "s", "t"], base=str(tiny_gemma),
                                    adapter=five)}


def reference_scores(package_dir: Path, texts: list[str]) -> np.ndarray:
    """The filter's model loaded on its own with plain transformers + peft, one text at a time."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pkg = load_package(package_dir)
    assert pkg.config.stage2 is not None
    base = pkg.config.stage2.base_model
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=len(pkg.config.dimensions))
    model.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(model, str(pkg.file(pkg.config.stage2.adapter))).eval()
    prep = pkg.config.preprocessing
    rows = []
    for text in texts:
        ids = encode_head_tail(tokenizer, [text], head=prep.head_tokens, tail=prep.tail_tokens,
                               max_length=pkg.config.stage2.max_length)
        with torch.inference_mode():
            rows.append(model(input_ids=torch.tensor(ids)).logits[0].numpy())
    return np.stack(rows).astype(np.float64)


def test_pool_equals_the_filters_own_model(gemma_packages: dict[str, Path]) -> None:
    texts = toy_texts(7, seed=5)
    pool = StudentPool(batch_size=3)
    pkg = load_package(gemma_packages["three"])
    pool.register(pkg)
    out = pool.predict(pkg.ref, texts)
    assert out.shape == (7, 3) and out.dtype == np.float64
    np.testing.assert_allclose(out, reference_scores(gemma_packages["three"], texts), atol=1e-5)


def test_batching_and_order_do_not_change_scores(gemma_packages: dict[str, Path]) -> None:
    texts = toy_texts(9, seed=6)
    lengths = {len(t) for t in texts}
    assert len(lengths) > 3  # padding really happens
    pool = StudentPool(batch_size=4)
    pkg = load_package(gemma_packages["three"])
    pool.register(pkg)
    batched = pool.predict(pkg.ref, texts)
    single = np.stack([pool.predict(pkg.ref, [t])[0] for t in texts])
    reversed_ = pool.predict(pkg.ref, texts[::-1])[::-1]
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(batched, reversed_, atol=1e-5)


def test_two_filters_with_different_dimensions_share_one_base(gemma_packages: dict[str, Path]) -> None:
    texts = toy_texts(5, seed=7)
    three, five = load_package(gemma_packages["three"]), load_package(gemma_packages["five"])
    shared = StudentPool(batch_size=2)
    shared.register(three)
    shared.register(five)
    shared.register(three)  # idempotent
    assert shared.refs == sorted([three.ref, five.ref])
    assert len(shared._bases) == 1  # one base in memory for both
    alone = {}
    for pkg in (three, five):
        pool = StudentPool(batch_size=2)
        pool.register(pkg)
        alone[pkg.ref] = pool.predict(pkg.ref, texts)
    # Interleave the filters so adapters and heads are switched back and forth.
    for _ in range(2):
        for pkg in (five, three):
            got = shared.predict(pkg.ref, texts)
            assert got.shape == (5, len(pkg.config.dimensions))
            np.testing.assert_allclose(got, alone[pkg.ref], atol=1e-5)
    assert not np.allclose(alone[three.ref], alone[five.ref][:, :3], atol=1e-3)
    items = [(five.ref, texts[0]), (three.ref, texts[1]), (five.ref, texts[2]), (three.ref, texts[0])]
    rows = shared.predict_many(items)
    assert [r.shape for r in rows] == [(5,), (3,), (5,), (3,)]
    np.testing.assert_allclose(rows[0], alone[five.ref][0], atol=1e-5)
    np.testing.assert_allclose(rows[1], alone[three.ref][1], atol=1e-5)
    np.testing.assert_allclose(rows[2], alone[five.ref][2], atol=1e-5)
    np.testing.assert_allclose(rows[3], alone[three.ref][0], atol=1e-5)


def test_unregister_keeps_the_other_filter_working(gemma_packages: dict[str, Path]) -> None:
    texts = toy_texts(3, seed=8)
    three, five = load_package(gemma_packages["three"]), load_package(gemma_packages["five"])
    pool = StudentPool()
    pool.register(three)
    pool.register(five)
    before = pool.predict(five.ref, texts)
    pool.unregister(three.ref)
    assert three.ref not in pool and five.ref in pool
    with pytest.raises(KeyError, match="no student registered"):
        pool.predict(three.ref, texts)
    np.testing.assert_allclose(pool.predict(five.ref, texts), before, atol=1e-6)
    pool.register(three)  # hot reload: back again on the same base
    assert len(pool._bases) == 1
    pool.unregister(three.ref)
    pool.unregister(five.ref)
    assert pool.refs == [] and not pool._bases
    pool.unregister("never@1")  # no-op


def test_missing_or_mismatched_adapters_are_clear_errors(gemma_packages: dict[str, Path], tiny_gemma: Path,
                                                         tmp_path: Path) -> None:
    empty = load_package(student_package(tmp_path, "empty", ["a", "b"], base=str(tiny_gemma)))
    pool = StudentPool()
    with pytest.raises(ModelFilesMissingError, match="adapter files missing"):
        pool.register(empty)
    # A 3-dimension adapter in a package declaring 2 dimensions.
    wrong = load_package(student_package(tmp_path, "wrong", ["a", "b"], base=str(tiny_gemma),
                                         adapter=gemma_packages["three"] / "adapter"))
    with pytest.raises(ModelLoadError, match="adapter head has shape"):
        pool.register(wrong)
    assert not pool._bases  # a base whose only adapter failed is not kept
    nobase = load_package(student_package(tmp_path, "nobase", ["a"], base=str(tmp_path / "no-such-base"),
                                          adapter=gemma_packages["three"] / "adapter"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        pool.register(nobase)
    no_stage2 = load_package(student_package(tmp_path, "nostage2", ["a"], base="x"))
    object.__setattr__(no_stage2, "config", no_stage2.config.model_copy(update={"stage2": None}))
    with pytest.raises(PackageError, match="no stage2"):
        pool.register(no_stage2)


def test_bert_student_on_minilm(minilm_path: Path, tmp_path: Path) -> None:
    """The demo filters' CPU student: all-MiniLM-L6-v2 as a BERT sequence-regression base."""
    adapter = train_tiny_student(minilm_path, ["x", "y"], tmp_path / "adapter", seed=3, n=8)
    pkg_dir = student_package(tmp_path / "filters", "minilm", ["x", "y"], base=str(minilm_path),
                              adapter=adapter)
    pkg = load_package(pkg_dir)
    pool = StudentPool(batch_size=3)
    pool.register(pkg)
    texts = toy_texts(5, seed=9)
    out = pool.predict(pkg.ref, texts)
    np.testing.assert_allclose(out, reference_scores(pkg_dir, texts), atol=1e-5)
    np.testing.assert_allclose(out, np.stack([pool.predict(pkg.ref, [t])[0] for t in texts]), atol=1e-5)


@pytest.fixture(scope="module")
def gguf_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny Gemma-3 GGUF (Gemma tokenizer: <bos>, pad 0); converted into a test cache, never the user's."""
    from tests.scoring.test_gguf import write_tiny_gemma_gguf

    patch = pytest.MonkeyPatch()
    patch.setenv("FLUXSCORE_MODEL_CACHE", str(tmp_path_factory.mktemp("model-cache")))
    path, _ = write_tiny_gemma_gguf(tmp_path_factory.mktemp("gguf") / "tiny-gemma3.gguf", seed=4)
    yield path
    patch.undo()


def test_gguf_gemma_student_reads_bos_head_and_tail(gguf_base: Path, tmp_path: Path) -> None:
    """A student on a GGUF base, trained and served through the same cut: <bos>, the first ``head`` and the
    last ``tail`` tokens, right-padded, pooled at the last real token."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from scoring.gguf import SOURCE_NAME
    from scoring.models import model_revision
    from scoring.package import sha256_file
    from scoring.student import resolve_base

    head, tail = 8, 4
    adapter = train_tiny_student(gguf_base, ["a", "b"], tmp_path / "adapter", seed=4, head_tokens=head,
                                 tail_tokens=tail, max_length=16)
    pkg = load_package(student_package(tmp_path / "filters", "ggufed", ["a", "b"], base=str(gguf_base),
                                       adapter=adapter, head=head, tail=tail, max_length=16))
    pool = StudentPool(batch_size=3)
    pool.register(pkg)
    converted = Path(resolve_base(str(gguf_base)))
    assert json.loads((converted / SOURCE_NAME).read_text())["gguf_sha256"] == sha256_file(gguf_base)
    assert pool.revision(pkg.ref) == model_revision(str(converted))

    start = "News about the solar panels says more about the wind farm"
    texts = [f"{start} {'about the bank ' * n}the new solar farm says more" for n in (3, 9, 30)] + ["News"]
    out = pool.predict(pkg.ref, texts)
    tokenizer = AutoTokenizer.from_pretrained(str(converted))
    assert tokenizer.bos_token_id == 2 and tokenizer.pad_token_id == 0
    model = AutoModelForSequenceClassification.from_pretrained(str(converted), num_labels=2)
    model.config.pad_token_id = 0
    model = PeftModel.from_pretrained(model, str(pkg.file("adapter"))).eval()
    for text, row in zip(texts, out, strict=True):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        cut = ids if len(ids) <= head + tail else ids[:head] + ids[-tail:]
        with torch.inference_mode():
            expected = model(input_ids=torch.tensor([[2, *cut]])).logits[0].numpy()
        np.testing.assert_allclose(row, expected, atol=1e-5)
    # Batched (right-padded with pad id 0) equals one at a time; the middle of a long text is not read.
    np.testing.assert_allclose(out, np.stack([pool.predict(pkg.ref, [t])[0] for t in texts]), atol=1e-5)
    middle = texts[2].replace("about the bank about the bank", "about the wind about the wind", 3)
    ending = texts[2].replace("the new solar farm says more", "the new wind bank says about")
    assert middle != texts[2] != ending
    np.testing.assert_allclose(pool.predict(pkg.ref, [middle])[0], out[2], atol=1e-6)
    assert not np.allclose(pool.predict(pkg.ref, [ending])[0], out[2], atol=1e-4)
