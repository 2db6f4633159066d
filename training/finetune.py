"""Fine-tuning from rated memes: the loop that turns 👍 into a better model.

Weighting: a caption with score s > 0 gets weight 1 + ln(s); captions with score <= 0 are left
out. Negative weights (unlikelihood training) push probability mass to *somewhere* else, and on
a character model that somewhere is often misspelling: they hurt fluency for little gain. Every
batch also replays original training memes (half by default), so a few hundred rated captions
cannot make the model forget how memes are written; `memebot eval` before and after shows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from model.checkpoint import Checkpoint, from_model
from model.vocab import Vocab, normalize_box
from training.batches import make_batch, template_id_map
from training.dataset import PackedDataset
from training.train import Recipe, loss_on, make_optimizer, resolve_device

EVAL_MEMES = 2000


@dataclass(frozen=True)
class RatedCaption:
    template_id: int  # the model's id (0 = unknown)
    tokens: np.ndarray
    weight: float


def caption_weight(score: int) -> float:
    return 1.0 + math.log(score) if score > 0 else 0.0


def rated_captions(
    rows, slug_to_dataset: dict[str, str], checkpoint: Checkpoint, vocab: Vocab
) -> list[RatedCaption]:
    """Export rows -> training examples; rows the vocabulary cannot spell are skipped."""
    out = []
    for row in rows:
        weight = caption_weight(row.score)
        boxes = [normalize_box(b) for b in row.boxes]
        if weight <= 0 or not any(boxes) or not all(vocab.is_known(c) for b in boxes for c in b):
            continue
        ids = np.array(vocab.encode_boxes(boxes)[:199], dtype=np.uint8)
        tid = checkpoint.template_id(slug_to_dataset.get(row.template, ""))
        out.append(RatedCaption(tid, ids, weight))
    return out


def finetune(
    base: Checkpoint,
    examples: list[RatedCaption],
    dataset: PackedDataset,
    steps: int = 200,
    lr: float = 1e-4,
    batch_size: int = 32,
    replay: float = 0.5,
    device: str = "cpu",
    seed: int = 0,
) -> Checkpoint:
    dev = resolve_device(device)
    model = base.build().to(dev)
    model.train()
    optimizer = make_optimizer(model, Recipe(lr=lr, weight_decay=0.0))
    rng = np.random.default_rng(seed)
    train_idx = dataset.split(val=False)
    id_map = template_id_map(dataset, base.templates)
    n_replay = int(round(batch_size * replay)) if len(train_idx) else 0
    n_rated = batch_size - n_replay
    weights_all = np.array([e.weight for e in examples])
    for _ in range(steps):
        picks = rng.choice(len(examples), size=n_rated, replace=True)
        captions = [examples[i].tokens for i in picks]
        tids = [examples[i].template_id for i in picks]
        weights = weights_all[picks].tolist()
        if n_replay:
            memes = rng.choice(
                train_idx, size=n_replay, replace=False if len(train_idx) >= n_replay else True
            )
            captions += [dataset.caption(i) for i in memes]
            tids += id_map[dataset.template_index[memes]].tolist()
            weights += [1.0] * n_replay
        loss = loss_on(model, make_batch(captions, tids, weights).to(dev))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return from_model(
        model,
        vocab=base.vocab,
        templates=base.templates,
        data_fingerprint=base.data_fingerprint,
        metrics={},
        train={
            **base.train,
            "finetuned_from": base.model_id,
            "finetune_examples": len(examples),
            "finetune_steps": steps,
        },
    )
