"""The comparison protocol: teacher-forced next-character accuracy over every target position.

A target position is each character, each <sep> and the final <end> of every kept meme.
Accuracy = positions where the arg-max equals the truth / all positions, pooled over all memes
(not averaged per meme). Bits per character is the mean negative log2-likelihood over the same
positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F
from tqdm import tqdm

from model.vocab import PAD
from training.batches import Batch, batches_in_order, template_id_map
from training.dataset import PackedDataset


@dataclass
class Tally:
    correct: int = 0
    positions: int = 0
    nll: float = 0.0  # natural log, summed
    memes: int = 0

    def add(self, other: Tally) -> None:
        self.correct += other.correct
        self.positions += other.positions
        self.nll += other.nll
        self.memes += other.memes

    @property
    def accuracy(self) -> float:
        return self.correct / self.positions if self.positions else 0.0

    @property
    def bits_per_char(self) -> float:
        return self.nll / self.positions / math.log(2) if self.positions else 0.0


@dataclass
class EvalReport:
    overall: Tally
    per_template: dict[str, Tally] = field(default_factory=dict)

    def to_dict(self) -> dict:
        def row(t: Tally) -> dict:
            return {
                "accuracy": t.accuracy,
                "bits_per_char": t.bits_per_char,
                "positions": t.positions,
                "memes": t.memes,
            }

        return {
            "overall": row(self.overall),
            "per_template": {k: row(v) for k, v in self.per_template.items()},
        }


@torch.no_grad()
def score_batch(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-meme (correct, positions, nll) for one batch."""
    logits = model(batch.template_ids, batch.inputs)  # [B, T, V]
    mask = batch.targets != PAD
    correct = ((logits.argmax(-1) == batch.targets) & mask).sum(1)
    nll = F.cross_entropy(logits.transpose(1, 2), batch.targets, ignore_index=PAD, reduction="none").sum(1)
    return correct, mask.sum(1), nll


def evaluate(
    model: nn.Module,
    dataset: PackedDataset,
    indices: np.ndarray,
    model_templates: list[str],
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> EvalReport:
    model.eval()
    id_map = template_id_map(dataset, model_templates)
    overall = Tally()
    per_tpl = {name: Tally() for name in dataset.templates}
    lengths = dataset.offsets[indices + 1] - dataset.offsets[indices]
    order = indices[np.argsort(lengths, kind="stable")]  # same order as batches_in_order
    batches = batches_in_order(dataset, indices, id_map, batch_size)
    total = math.ceil(len(indices) / batch_size)
    done = 0
    for batch in tqdm(batches, total=total, disable=not progress, desc="eval", unit="batch"):
        correct, positions, nll = (t.cpu().numpy() for t in score_batch(model, batch.to(device)))
        rows = order[done : done + len(correct)]
        done += len(correct)
        for tpl, c, p, n in zip(dataset.template_index[rows], correct, positions, nll, strict=True):
            t = per_tpl[dataset.templates[tpl]]
            t.correct += int(c)
            t.positions += int(p)
            t.nll += float(n)
            t.memes += 1
    for t in per_tpl.values():
        overall.add(t)
    return EvalReport(overall, {k: v for k, v in per_tpl.items() if v.memes})
