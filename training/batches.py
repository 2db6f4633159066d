"""Turning packed captions into padded teacher-forcing batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from model.vocab import END, PAD, START
from training.dataset import PackedDataset


@dataclass
class Batch:
    template_ids: torch.Tensor  # long [B]: model template ids (0 = unknown)
    inputs: torch.Tensor  # long [B, T]: <start> c1 .. cn, right-padded
    targets: torch.Tensor  # long [B, T]: c1 .. cn <end>, right-padded with <pad> (ignored)
    weights: torch.Tensor | None = None  # float [B]: per-caption loss weight (fine-tuning)

    def to(self, device: torch.device | str) -> Batch:
        w = None if self.weights is None else self.weights.to(device)
        return Batch(self.template_ids.to(device), self.inputs.to(device), self.targets.to(device), w)

    @property
    def n_targets(self) -> int:
        return int((self.targets != PAD).sum())


def make_batch(
    captions: list[np.ndarray], template_ids: list[int], weights: list[float] | None = None
) -> Batch:
    T = max(len(c) for c in captions) + 1
    inputs = np.full((len(captions), T), PAD, dtype=np.int64)
    targets = np.full((len(captions), T), PAD, dtype=np.int64)
    for i, c in enumerate(captions):
        inputs[i, 0] = START
        inputs[i, 1 : len(c) + 1] = c
        targets[i, : len(c)] = c
        targets[i, len(c)] = END
    return Batch(
        torch.as_tensor(template_ids, dtype=torch.long),
        torch.from_numpy(inputs),
        torch.from_numpy(targets),
        None if weights is None else torch.as_tensor(weights, dtype=torch.float32),
    )


def template_id_map(dataset: PackedDataset, model_templates: list[str]) -> np.ndarray:
    """dataset template index -> model template id (0 for templates the model does not know)."""
    lookup = {name: i + 1 for i, name in enumerate(model_templates)}
    return np.array([lookup.get(name, 0) for name in dataset.templates], dtype=np.int64)


def batches_in_order(
    dataset: PackedDataset, indices: np.ndarray, id_map: np.ndarray, batch_size: int
) -> Iterator[Batch]:
    """Every meme of `indices` exactly once (evaluation). Sorted by length to waste little on padding."""
    lengths = dataset.offsets[indices + 1] - dataset.offsets[indices]
    ordered = indices[np.argsort(lengths, kind="stable")]
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        yield make_batch([dataset.caption(i) for i in chunk], id_map[dataset.template_index[chunk]].tolist())


def training_batches(
    dataset: PackedDataset,
    indices: np.ndarray,
    id_map: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    unknown_template_p: float = 0.0,
    weights: np.ndarray | None = None,
) -> Iterator[Batch]:
    """Endless shuffled batches. Memes are grouped by similar length within windows of 64 batches
    (less padding) and the batches are shuffled again, so order stays random. `weights`, indexed
    like the dataset, gives each meme's loss weight (see training.train.meme_weights)."""
    window = batch_size * 64
    while True:
        perm = rng.permutation(indices)
        for start in range(0, len(perm), window):
            chunk = perm[start : start + window]
            lengths = dataset.offsets[chunk + 1] - dataset.offsets[chunk]
            chunk = chunk[np.argsort(lengths, kind="stable")]
            groups = [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
            for g in rng.permutation(len(groups)):
                group = groups[g]
                ids = id_map[dataset.template_index[group]]
                if unknown_template_p > 0:
                    # Teach the shared "unknown" id to caption any template, for the 12 without data.
                    ids = np.where(rng.random(len(ids)) < unknown_template_p, 0, ids)
                yield make_batch(
                    [dataset.caption(i) for i in group],
                    ids.tolist(),
                    None if weights is None else weights[group].tolist(),
                )
