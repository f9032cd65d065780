"""The accelerator benchmark's code path (shrunk, on the CPU) and its FLOP count."""

from __future__ import annotations

import pytest

from bench.gpu import DecoderShape, EncoderShape, main


def test_flops_of_the_production_shapes() -> None:
    # Gemma-3-1B without its 302M embedding parameters is ~0.70B; 2 FLOPs per parameter per token,
    # plus attention over 512 tokens.
    assert 7.0e11 < DecoderShape().flops_per_sequence(512) < 8.0e11
    # e5-small: ~21M encoder parameters.
    assert 2.2e10 < EncoderShape().flops_per_sequence(512) < 3.0e10
    # Attention grows with the square of the length, the rest linearly.
    shape = DecoderShape()
    assert shape.flops_per_sequence(1024) > 2 * shape.flops_per_sequence(512)


@pytest.mark.integration
def test_smoke_run_measures_both_stages() -> None:
    results = main(["--smoke", "--device", "cpu", "--iters", "1", "--warmup", "0", "--student-batch", "8",
                    "--encoder-batch", "8"])
    assert [r.benchmark for r in results] == ["stage2", "stage1"]
    for r in results:
        assert r.items == 8 and r.items_per_s > 0
        assert r.extra["achieved_tflops"] > 0 and "fraction_of_peak" not in r.extra  # no peak known for a CPU
