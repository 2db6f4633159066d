"""The pool's CUDA path, on the shipped model. Skipped where torch sees no GPU (CI, this project's
CPU machine); run on a lent GPU machine by scripts/device-session.sh."""

from __future__ import annotations

import asyncio

import pytest
import torch

from common.config import ModelConfig, load_config
from model.generate import load_generator
from model.pool import ModelPool
from model.requests import GenerationRequest

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TEMPLATES = ["Change-My-Mind", "Drake-Hotline-Bling", "Two-Buttons", "Ancient-Aliens", "Distracted-Boyfriend"]


def test_greedy_captions_on_the_gpu_are_the_cpu_captions():
    """Same weights, same arithmetic up to rounding: greedy decoding picks the same characters
    (a near-tie may flip one caption in a few; none of these is near one)."""
    checkpoint = load_config().checkpoint_path
    requests = [GenerationRequest(t, prefix="when", method="greedy", n_boxes=2) for t in TEMPLATES]
    on_cpu = load_generator(checkpoint, "cpu").generate_batch(requests)
    on_gpu = load_generator(checkpoint, "cuda").generate_batch(requests)
    cpu_text = [r.captions[0].text for r in on_cpu]
    gpu_text = [r.captions[0].text for r in on_gpu]
    assert all(t.startswith("when") and len(t) > len("when ") for t in gpu_text)
    assert sum(a == b for a, b in zip(cpu_text, gpu_text, strict=True)) >= len(TEMPLATES) - 1, (
        cpu_text,
        gpu_text,
    )


def test_the_gpu_pool_serves_256_callers_at_once_each_with_its_own_caption():
    async def scenario() -> tuple[list, list, int]:
        pool = ModelPool.from_config(
            ModelConfig(device="cuda", max_batch=256, batch_wait_ms=5, queue_size=1024, timeout_s=120),
            load_config().checkpoint_path,
        )
        await pool.start()
        try:
            requests = [
                GenerationRequest(TEMPLATES[i % 5], prefix=f"{i} ", method="sample", seed=i, n_boxes=2)
                for i in range(256)
            ]
            results = await asyncio.gather(*(pool.generate(r) for r in requests))
            alone = [await pool.generate(requests[i]) for i in (0, 77, 255)]
            return results, alone, pool.stats.max_batch_size
        finally:
            await pool.close()

    results, alone, largest = asyncio.run(scenario())
    for i, result in enumerate(results):
        assert result.captions[0].boxes[0].startswith(f"{i} ")
    # A seeded request is answered the same alone as inside a batch of hundreds.
    assert [r.captions[0].boxes for r in alone] == [results[i].captions[0].boxes for i in (0, 77, 255)]
    assert largest > 32  # the callers really were batched together
