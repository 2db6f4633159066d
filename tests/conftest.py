"""Shared fixtures: a small synthetic dataset and a tiny model trained on it in seconds.

The synthetic data has one fixed caption per template, so a model that learned it must
reproduce exactly those captions: tests can assert on real generated text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Loopback traffic of the fake chat servers must never go through a proxy.
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

SYNTHETIC_CAPTIONS = {
    "Drake-Hotline-Bling": ["writing tests", "shipping on friday"],
    "Change-My-Mind": ["pineapple on pizza is a crime"],
    "Two-Buttons": ["tabs", "spaces", "me"],
    "Ancient-Aliens": ["i'm not saying it was aliens", "but it was aliens"],
}


def write_dataset(root: Path, captions: dict[str, list[str]], copies: int = 40) -> Path:
    """An ImgFlip575K-layout folder: memes/<Template>.json, each caption repeated `copies` times."""
    memes = root / "memes"
    memes.mkdir(parents=True, exist_ok=True)
    for name, boxes in captions.items():
        entries = [
            {
                "url": f"https://i.imgflip.com/{name}-{i}.jpg",
                "post": f"https://imgflip.com/i/{name}-{i}",
                "metadata": {"views": "1,234", "img-votes": "12", "title": name, "author": "test"},
                "boxes": boxes,
            }
            for i in range(copies)
        ]
        (memes / f"{name}.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("synthetic"), SYNTHETIC_CAPTIONS)


@pytest.fixture(scope="session")
def tiny_checkpoint(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer transformer that has memorised SYNTHETIC_CAPTIONS (a few seconds on 2 cores)."""
    import torch

    from training.dataset import load_dataset
    from training.train import Recipe, train

    torch.set_num_threads(2)
    run = tmp_path_factory.mktemp("tiny-run")
    dataset = load_dataset(synthetic_dataset, run / "cache")
    dataset.is_val[:] = False  # train on everything: memorising is the point
    dataset.is_val[::7] = True
    recipe = Recipe(
        arch="transformer",
        model={"n_layer": 1, "n_embd": 48, "n_head": 2, "block_size": 208},
        batch_size=32,
        lr=1e-2,
        warmup_steps=10,
        max_steps=150,
        eval_every=150,
        eval_memes=50,
        unknown_template_p=0.0,
        weight_decay=0.0,
    )
    train(recipe, dataset, run, device="cpu", progress=False)
    return run / "best.pt"
