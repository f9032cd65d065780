"""Accelerator throughput of the two stages at production shape, as a fraction of the physical limit.

    python -m bench gpu                       # on a CUDA machine: bf16, 512 tokens, both stages
    python -m bench gpu --smoke               # the same code path, shrunk, on the CPU (for CI and laptops)

Stage 2 is a Gemma-3-1B-shaped regression model with random weights (hidden 1152, 26 layers, 4 query
heads and 1 KV head of dim 256, intermediate 6912, vocab 262144: the real model's compute) carrying one
LoRA adapter per filter; one forward pass serves a batch that mixes the filters (peft's
``adapter_names``), so adapters share the base's matmuls. Stage 1 is an e5-small-sized encoder (12
layers, hidden 384) with mean pooling. Every batch is full length (512 tokens, the worst case; real
articles are length-sorted into shorter batches). FLOPs are counted from the shapes (2 per multiply-add:
projections, MLP, attention scores and values, the head) and divided by the device's dense bf16 peak.

Targets (issue [bench]): stage 2 >= 500 articles/s, stage 1 >= 5,000 articles/s on one H100/H200.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.common import Result, print_results, save

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device name; --peak-tflops overrides.
PEAK_BF16_TFLOPS = {"H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0}


@dataclass(frozen=True)
class DecoderShape:
    hidden: int = 1152
    layers: int = 26
    heads: int = 4
    kv_heads: int = 1
    head_dim: int = 256
    intermediate: int = 6912
    vocab: int = 262144
    labels: int = 6
    lora_r: int = 16

    def flops_per_sequence(self, tokens: int) -> float:
        """Forward FLOPs for one sequence of ``tokens`` (LoRA and the head included)."""
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        per_token_params = (self.hidden * q + 2 * self.hidden * kv + q * self.hidden
                            + 3 * self.hidden * self.intermediate)
        # LoRA on q, k, v, o: r * (in + out) each.
        lora = self.lora_r * ((self.hidden + q) * 2 + (self.hidden + kv) * 2)
        matmul = 2.0 * self.layers * (per_token_params + lora) * tokens
        attention = 2.0 * 2.0 * self.layers * tokens * tokens * q  # scores and weighted values
        head = 2.0 * self.hidden * self.labels  # the regression head reads the last token only
        return matmul + attention + head


@dataclass(frozen=True)
class EncoderShape:
    hidden: int = 384
    layers: int = 12
    heads: int = 12
    intermediate: int = 1536
    vocab: int = 250037

    def flops_per_sequence(self, tokens: int) -> float:
        matmul = 2.0 * self.layers * (4 * self.hidden * self.hidden + 2 * self.hidden * self.intermediate) * tokens
        attention = 2.0 * 2.0 * self.layers * tokens * tokens * self.hidden
        return matmul + attention


SMOKE_DECODER = DecoderShape(hidden=64, layers=2, heads=4, kv_heads=1, head_dim=16, intermediate=128, vocab=1000,
                             lora_r=4)
SMOKE_ENCODER = EncoderShape(hidden=64, layers=2, heads=4, intermediate=128, vocab=1000)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Timing:
    articles_per_s: float
    articles: int
    seconds: float
    flops_per_article: float


def _time(fn: Callable[[], Any], device: str, *, batch: int, flops: float, warmup: int, iters: int) -> Timing:
    """Throughput over ``iters`` calls, after ``warmup`` calls (compilation, autotuning, allocator growth)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    seconds = time.perf_counter() - start
    return Timing(batch * iters / seconds, batch * iters, seconds, flops)


def build_student(shape: DecoderShape, filters: int, device: str, dtype: Any, attn: str) -> Any:
    """A random Gemma-3 regression model with one LoRA adapter per filter (names f0, f1, ...)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import Gemma3TextConfig, Gemma3TextForSequenceClassification

    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"num_labels": shape.labels, "attn_implementation": attn}  # PretrainedConfig's
    config = Gemma3TextConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                              num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                              num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim,
                              max_position_embeddings=8192, pad_token_id=0, **kwargs)
    with torch.device(device):
        model = Gemma3TextForSequenceClassification(config).to(dtype)
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=shape.lora_r, lora_alpha=2 * shape.lora_r,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    peft_model = get_peft_model(model, lora, adapter_name="f0")
    for i in range(1, filters):
        peft_model.add_adapter(f"f{i}", lora)
    return peft_model.to(device=device, dtype=dtype).eval()


def build_encoder(shape: EncoderShape, device: str, dtype: Any, attn: str) -> Any:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"attn_implementation": attn}
    config = BertConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                        num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                        max_position_embeddings=512, **kwargs)
    model: Any = BertModel(config)
    return model.to(device=device, dtype=dtype).eval()


def bench_student(shape: DecoderShape, *, filters: int, batch: int, tokens: int, device: str, dtype: Any,
                  attn: str, compile_: bool, iters: int, warmup: int) -> Timing:
    """Batches that mix every filter's adapter, scored in one pass over the shared base."""
    import torch

    model = build_student(shape, filters, device, dtype, attn)
    if compile_:
        model = torch.compile(model, dynamic=False)
    ids = torch.randint(1, shape.vocab, (batch, tokens), device=device)
    mask = torch.ones_like(ids)
    names = [f"f{i % filters}" for i in range(batch)]

    def forward() -> Any:
        with torch.inference_mode():
            return model(input_ids=ids, attention_mask=mask, adapter_names=names).logits

    return _time(forward, device, batch=batch, flops=shape.flops_per_sequence(tokens), warmup=warmup, iters=iters)


def bench_encoder(shape: EncoderShape, *, batch: int, tokens: int, device: str, dtype: Any, attn: str,
                  compile_: bool, iters: int, warmup: int) -> Timing:
    import torch

    model: Any = build_encoder(shape, device, dtype, attn)
    if compile_:
        model = torch.compile(model, dynamic=False)
    ids = torch.randint(1, shape.vocab, (batch, tokens), device=device)
    mask = torch.ones_like(ids)

    def forward() -> Any:
        with torch.inference_mode():
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    return _time(forward, device, batch=batch, flops=shape.flops_per_sequence(tokens), warmup=warmup, iters=iters)


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def device_info(device: str) -> tuple[str, float | None]:
    import torch

    if not device.startswith("cuda"):
        return "cpu", None
    name = torch.cuda.get_device_name(torch.device(device))
    for key, peak in PEAK_BF16_TFLOPS.items():
        if key in name:
            return name, peak
    return name, None


def main(argv: Sequence[str] | None = None) -> list[Result]:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, else fp32")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--filters", type=int, default=4, help="LoRA adapters on the shared base")
    parser.add_argument("--student-batch", type=int, default=64)
    parser.add_argument("--encoder-batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, flash_attention_2)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, few tokens: checks the code path")
    args = parser.parse_args(argv)

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or
                                                             ("bf16" if args.device.startswith("cuda") else "fp32")]
    decoder, encoder = (SMOKE_DECODER, SMOKE_ENCODER) if args.smoke else (DecoderShape(), EncoderShape())
    tokens = min(args.tokens, 64) if args.smoke else args.tokens
    name, peak = device_info(args.device)
    peak = args.peak_tflops or peak
    common = {"device": args.device, "dtype": dtype, "attn": args.attn, "compile_": args.compile,
              "iters": args.iters, "warmup": args.warmup, "tokens": tokens}
    print(f"device {name}; {str(dtype).removeprefix('torch.')}; {tokens} tokens; peak "
          f"{f'{peak:.0f} TFLOP/s' if peak else 'unknown'}{'; smoke shapes' if args.smoke else ''}")

    results: list[Result] = []
    for stage, label, timing, target in (
        ("stage2", f"Gemma-3-1B-shaped + {args.filters} LoRA adapters, one mixed batch of {args.student_batch}",
         bench_student(decoder, filters=args.filters, batch=args.student_batch, **common), 500.0),
        ("stage1", f"e5-small-shaped encoder, batch {args.encoder_batch}",
         bench_encoder(encoder, batch=args.encoder_batch, **common), 5000.0),
    ):
        tflops = timing.articles_per_s * timing.flops_per_article / 1e12
        extra: dict[str, Any] = {"device": name, "tokens": tokens,
                                 "gflop_per_article": _sig(timing.flops_per_article / 1e9),
                                 "achieved_tflops": _sig(tflops), "target_articles_per_s": target,
                                 "compile": args.compile, "attn": args.attn}
        if peak:
            extra["fraction_of_peak"] = _sig(tflops / peak)
        results.append(Result(stage, label, timing.articles_per_s, timing.articles, timing.seconds, extra=extra))
    # Smoke shapes say nothing about any device: printed, never saved as results.
    path = None if args.smoke else save("gpu", results, {"device": name, "peak_bf16_tflops": peak})
    print_results(results, "accelerator throughput at production shape", path)
    return results


if __name__ == "__main__":
    main()
