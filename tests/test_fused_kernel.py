"""The fused decoding kernel (model/kernels/decode_layers.cpp) computes what FrozenStep's
PyTorch ops compute, so switching it on changes speed, not captions."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint
from model.fused import load_fused_kernel
from model.generate import CaptionGenerator, load_generator
from model.requests import GenerationRequest
from model.transformer import FrozenStep, Transformer, TransformerConfig, half_weights_available
from model.vocab import PAD, START
from tests.conftest import SYNTHETIC_CAPTIONS
from tests.test_speculative import requests_to_compare, table_from

# The project's own build cache (git-ignored), so the minute of compiling is paid once.
KERNEL_DIR = Path(__file__).resolve().parent.parent / ".cache" / "kernels"
HALF = [False, True] if half_weights_available() else [False]


@pytest.fixture(scope="module")
def kernel():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler here: the kernel is optional and decoding uses PyTorch ops")
    built = load_fused_kernel(KERNEL_DIR)
    assert built is not None, "a C++ compiler is present but the fused kernel did not build"
    return built


def odd_model() -> Transformer:
    """Two layers and a head size (10) that is not a multiple of the vector width."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(n_layer=2, n_embd=40, n_head=4)).eval()
    with torch.no_grad():  # larger weights than the init's, so differences would show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Three left-padded prompts of different lengths, as the generator builds them."""
    rows = [[START, 5, 9, 14, 20, 7], [START, 11], [START, 30, 31, 32]]
    tokens = torch.full((3, 6), PAD)
    for i, row in enumerate(rows):
        tokens[i, 6 - len(row) :] = torch.tensor(row)
    return torch.tensor([1, 7, 0]), tokens


@pytest.mark.parametrize("half", HALF)
def test_kernel_matches_pytorch_ops_through_prefill_guesses_and_steps(kernel, half):
    model = odd_model()
    plain, fused = FrozenStep(model, half_weights=half), FrozenStep(model, half_weights=half, kernel=kernel)
    assert fused.fused is not None and plain.fused is None
    template_ids, tokens = prompts()
    with torch.inference_mode():
        reference, _ = model.prefill(template_ids, tokens)
        a, cache_a = plain.prefill(template_ids, tokens, room=16)
        b, cache_b = fused.prefill(template_ids, tokens, room=16)
        if not half:
            torch.testing.assert_close(a, reference, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
        # A pass of 4 guessed tokens per row; rows keep 0, 2 and 3 of them (the rest are hidden).
        guesses = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10], [11, 12, 13, 14]])
        a, cache_a = plain.extend(guesses, cache_a)
        b, cache_b = fused.extend(guesses, cache_b)
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
        kept = torch.tensor([0, 2, 3])
        cache_a, cache_b = cache_a.keep_columns(kept, 4), cache_b.keep_columns(kept, 4)
        for _ in range(3):  # single steps over a cache with hidden columns
            step = torch.tensor([15, 16, 17])
            a, cache_a = plain(step, cache_a)
            b, cache_b = fused(step, cache_b)
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
        n = cache_a.length
        for k_a, k_b in zip(cache_a.keys, cache_b.keys, strict=True):
            visible = cache_a.valid[:, :n, None, None].transpose(1, 2)  # [B, 1, n, 1]
            torch.testing.assert_close(k_b[:, :, :n] * visible, k_a[:, :, :n] * visible, atol=1e-4, rtol=1e-4)


def test_wide_batches_use_the_same_numbers(kernel):
    """Above HALF_MAX_ROWS rows the kernel switches from FBGEMM fp16 to BLAS on the same
    fp16-rounded weights: the logits agree with the PyTorch ops either way."""
    model = odd_model()
    half = bool(HALF[-1])
    plain, fused = FrozenStep(model, half_weights=half), FrozenStep(model, half_weights=half, kernel=kernel)
    template_ids = torch.arange(40) % 5
    tokens = torch.randint(3, 60, (40, 5))
    tokens[:, 0] = START
    with torch.inference_mode():
        a, _ = plain.prefill(template_ids, tokens)
        b, _ = fused.prefill(template_ids, tokens)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_captions_are_the_same_with_and_without_the_kernel(kernel, tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    with_kernel = CaptionGenerator(ckpt, kernel=kernel, half_weights=True)
    without = CaptionGenerator(ckpt, half_weights=True)
    requests = [GenerationRequest(t, method="greedy", n_boxes=len(b)) for t, b in SYNTHETIC_CAPTIONS.items()]
    requests += [
        GenerationRequest("Two-Buttons", method="sample", temperature=1.5, seed=7, n=4, prefix="tabs"),
        GenerationRequest("Change-My-Mind", method="beam", beam_width=3, n=2),
    ]
    got = with_kernel.generate_batch(requests)
    expected = without.generate_batch(requests)
    assert [[c.boxes for c in r.captions] for r in got] == [[c.boxes for c in r.captions] for r in expected]
    for (template, boxes), result in zip(SYNTHETIC_CAPTIONS.items(), got, strict=False):
        assert result.captions[0].boxes == boxes, template


def test_a_kernel_that_cannot_build_is_a_warning_not_a_failure(tmp_path, caplog):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    with caplog.at_level(logging.WARNING):
        assert load_fused_kernel(tmp_path / "kernels", source=broken) is None
    assert "using the plain PyTorch path" in caplog.text


def test_the_generator_loads_the_kernel_from_its_build_cache(kernel, tiny_checkpoint):
    generator = load_generator(tiny_checkpoint, half_weights=True, kernel_dir=KERNEL_DIR)
    assert isinstance(generator._step, FrozenStep) and generator._step.fused is not None
    req = GenerationRequest("Ancient-Aliens", method="greedy", n_boxes=2)
    assert generator.generate_batch([req])[0].captions[0].boxes == SYNTHETIC_CAPTIONS["Ancient-Aliens"]


def test_guesses_checked_by_the_kernel_keep_the_captions(kernel, tiny_checkpoint, tmp_path):
    """Speculative passes (several tokens per row, hidden columns after rejected guesses)
    through the kernel give the captions of plain one-step decoding without it."""
    draft = tmp_path / "draft.npz"
    table_from(["pineapple on pizza is fine", "writing code", "tabs and spaces", "it was aliens"]).save(draft)
    fast = load_generator(tiny_checkpoint, draft=draft, half_weights=True, kernel_dir=KERNEL_DIR)
    plain = load_generator(tiny_checkpoint, half_weights=True)
    assert fast.draft is not None and fast._step.fused is not None
    for req in requests_to_compare():
        assert (
            fast.generate_batch([req])[0].captions[0].boxes
            == plain.generate_batch([req])[0].captions[0].boxes
        )
