"""A reranker for best of N: how much a caption reads like a person's rather than the model's.

A logistic regression over hashed features of the caption as a reader sees it (lowercased, boxes
joined by " | "): character 1-4-grams, words and word pairs, the words paired with the template,
and the caption's length and box count. training/scorer.py fits it on people's captions against
the served candidates; best of N adds `weight * score` to each candidate's log-probability score
(model/sampling.py), so among N fluent candidates the one with a specific detail or a real
punchline wins over the generic one that log-probability prefers.

The score is the regression's logit: > 0 reads as a person's. Features are hashed with CRC-32 (in
C, stable across runs and machines), so the file is just the weights: 2**18 of them in fp16, 512 KB.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
NGRAMS = (1, 2, 3, 4)


class ScorerError(ValueError):
    """The scorer file is missing or not a scorer."""


def caption_text(boxes: Sequence[str]) -> str:
    """A caption as a reader saw it in the blind pairs: lowercased, empty boxes at the end left
    out, boxes joined by " | "."""
    kept = [b.strip().lower() for b in boxes]
    while kept and not kept[-1]:
        kept.pop()
    return " | ".join(kept)


def _bucket(feature: str, buckets: int) -> int:
    return zlib.crc32(feature.encode("utf-8", "surrogatepass")) % buckets


def features(text: str, template: str, buckets: int) -> list[int]:
    """The caption's feature buckets, each once (present or not, not counted)."""
    names: set[str] = set()
    padded = f"^{text}$"
    for n in NGRAMS:
        names.update("c" + padded[i : i + n] for i in range(len(padded) - n + 1))
    words = WORD.findall(text)
    names.update("w" + w for w in words)
    names.update(f"t{template}\x00{w}" for w in words)
    names.update(f"b{a} {b}" for a, b in zip(words, words[1:], strict=False))
    if words:
        names.add("f" + words[0])
        names.add("e" + words[-1])
    boxes = text.count(" | ") + 1 if text else 0
    names.add(f"L{min(len(text) // 10, 15)}")
    names.add(f"W{min(len(words), 30)}")
    names.add(f"B{min(boxes, 6)}")
    return sorted({_bucket(name, buckets) for name in names})


class CaptionScorer:
    def __init__(self, weights: torch.Tensor, bias: float) -> None:
        self.weights = (
            weights.float().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights, np.float32)
        )
        self.bias = float(bias)

    @property
    def buckets(self) -> int:
        return len(self.weights)

    def score(self, template: str, boxes: Sequence[str]) -> float:
        """The logit that `boxes` are a person's caption for `template` (> 0: more likely a
        person's)."""
        idx = features(caption_text(boxes), template, self.buckets)
        return float(self.weights[idx].sum()) + self.bias

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.savez_compressed(f, weights=self.weights.astype(np.float16), bias=np.float32(self.bias))

    @classmethod
    def load(cls, path: Path) -> CaptionScorer:
        try:
            with np.load(path) as data:
                weights, bias = data["weights"].astype(np.float32), float(data["bias"])
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ScorerError(f"{path} is not a caption scorer ({exc})") from exc
        if weights.ndim != 1 or len(weights) == 0:
            raise ScorerError(f"{path} is not a caption scorer (weights of shape {weights.shape})")
        return cls(torch.from_numpy(weights), bias)
