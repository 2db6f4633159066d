"""`memebot scorer`: teach a small scorer which captions read as a person's, to rerank best of N.

Readers given a person's caption and ours pick ours out because it is fluent but generic: an
opening with no joke, no specific detail. The likeliest of N candidates is the most generic one,
so ranking by log-probability alone makes that worse. This trains the reranker of
model/scorer.py on what gives the model away: the served candidates for training-split memes
(label 0, every one of the N, because the scorer must rank among them) against people's
training-split captions of the same templates (label 1). Validation memes are never used, so
`memebot quality` and the blind pairs stay held out.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from model.requests import Caption, GenerationRequest, request_rows
from model.scorer import CaptionScorer, caption_text, features
from training.quality import BOX_JOIN, Sample, caption_texts, first_word_prefix, trimmed

if TYPE_CHECKING:
    from model.pool import BatchGenerator
    from training.dataset import PackedDataset


def pick_training_samples(dataset: PackedDataset, n: int, seed: int = 0) -> list[Sample]:
    """n training memes by a fixed-seed shuffle; every second one gets its first word as prefix
    (as the quality report asks, so the scorer sees requests like the served ones)."""
    chosen = np.random.default_rng(seed).permutation(dataset.split(val=False))[:n]
    texts = caption_texts(dataset, chosen)
    samples = []
    for k, (i, text) in enumerate(zip(chosen.tolist(), texts, strict=True)):
        boxes = tuple(text.split(BOX_JOIN))
        prefix = first_word_prefix(boxes) if k % 2 else ""
        samples.append(Sample(int(i), dataset.templates[dataset.template_index[i]], boxes, prefix))
    return samples


def generate_candidates(
    generator: BatchGenerator,
    requests: Sequence[GenerationRequest],
    max_rows: int,
    progress: Callable[[int], None] | None = None,
) -> list[list[Caption]]:
    """Every candidate of each request (best of N: all N, distinct, best first), decoded in
    batches of at most `max_rows` rows."""
    out: list[list[Caption]] = []
    start = 0
    while start < len(requests):
        end, rows = start, 0
        while end < len(requests) and (end == start or rows + request_rows(requests[end]) <= max_rows):
            rows += request_rows(requests[end])
            end += 1
        out.extend(result.captions for result in generator.generate_batch(list(requests[start:end])))
        start = end
        if progress is not None:
            progress(len(out))
    return out


@dataclass
class Candidate:
    """One served candidate, as `memebot scorer --collect` writes it (a JSON line)."""

    template: str
    prefix: str
    rank: int  # 0: the likeliest of its request
    boxes: list[str]
    score: float  # the decoder's ranking score (log-probability / length**p)

    @classmethod
    def from_json(cls, line: str) -> Candidate:
        return cls(**json.loads(line))


def write_candidates(path: Path, samples: Sequence[Sample], results: Sequence[Sequence[Caption]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w") as f:
        for sample, captions in zip(samples, results, strict=True):
            for rank, c in enumerate(captions):
                row = Candidate(sample.template, sample.prefix, rank, list(c.boxes), float(c.score or 0.0))
                f.write(json.dumps(row.__dict__) + "\n")
                n += 1
    return n


def read_candidates(path: Path) -> list[Candidate]:
    return [Candidate.from_json(line) for line in path.read_text().splitlines() if line.strip()]


# ---- fitting ------------------------------------------------------------------------------


@dataclass
class FitReport:
    people: int
    generated: int
    held_out_accuracy: float  # people vs generated on the held-out tenth
    pick_person_rate: float  # held-out: how often a person's caption outscores a random candidate


def fit_scorer(
    people: Sequence[tuple[str, list[str]]],
    generated: Sequence[tuple[str, list[str]]],
    buckets: int = 1 << 18,
    epochs: int = 4,
    weight_decay: float = 1e-6,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[CaptionScorer, FitReport]:
    """A logistic regression over hashed n-gram features (model/scorer.py) telling people's
    captions (label 1) from generated ones (label 0), both given as (template, boxes). The two
    classes weigh the same whatever their counts; a tenth is held out to report on."""
    rng = random.Random(seed)
    items = [(t, b, 1.0) for t, b in people] + [(t, b, 0.0) for t, b in generated]
    rng.shuffle(items)
    cut = len(items) // 10
    held, train = items[:cut], items[cut:]
    torch.manual_seed(seed)
    weights = torch.zeros(buckets)
    bias = torch.zeros(1)
    weights.requires_grad_(True)
    bias.requires_grad_(True)
    opt = torch.optim.Adam([weights, bias], lr=0.02)
    n_pos = sum(1 for *_, y in train if y == 1.0)
    class_weight = {1.0: len(train) / (2 * max(1, n_pos)), 0.0: len(train) / (2 * max(1, len(train) - n_pos))}
    encoded = [
        (torch.tensor(features(caption_text(b), t, buckets), dtype=torch.long), y) for t, b, y in train
    ]
    batch = 256
    for epoch in range(epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        total = 0.0
        for s in range(0, len(order), batch):
            chunk = [encoded[i] for i in order[s : s + batch]]
            idx = torch.cat([f for f, _ in chunk])
            offsets = torch.tensor([0] + [len(f) for f, _ in chunk[:-1]]).cumsum(0)
            logits = (
                torch.nn.functional.embedding_bag(idx, weights[:, None], offsets, mode="sum")[:, 0] + bias
            )
            y = torch.tensor([yy for _, yy in chunk])
            w = torch.tensor([class_weight[yy] for _, yy in chunk])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=w)
            reg = weight_decay * (weights**2).sum()
            opt.zero_grad()
            (loss + reg).backward()
            opt.step()
            total += loss.item() * len(chunk)
        if progress is not None:
            progress(f"epoch {epoch + 1}: loss {total / len(encoded):.4f}")
    scorer = CaptionScorer(weights.detach().clone(), float(bias.item()))
    scores = [(scorer.score(t, b), y) for t, b, y in held]
    accuracy = sum((s > 0) == (y == 1.0) for s, y in scores) / max(1, len(scores))
    pos = [s for s, y in scores if y == 1.0]
    neg = [s for s, y in scores if y == 0.0]
    pairs = [(rng.choice(pos), rng.choice(neg)) for _ in range(2000)] if pos and neg else []
    pick = sum(p > n for p, n in pairs) / max(1, len(pairs))
    return scorer, FitReport(len(people), len(generated), accuracy, pick)


def people_captions(dataset: PackedDataset, n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """n training-split people's captions (template, boxes), by a fixed-seed shuffle."""
    chosen = np.random.default_rng(seed + 1).permutation(dataset.split(val=False))[:n]
    texts = caption_texts(dataset, chosen)
    return [
        (dataset.templates[dataset.template_index[i]], trimmed(tuple(text.split(BOX_JOIN))))
        for i, text in zip(chosen.tolist(), texts, strict=True)
    ]
