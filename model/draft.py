"""A character n-gram table that guesses the next few characters, for speculative decoding.

Decoding one character at a time costs a full pass through the network per character, and
at batch 1 that pass is dominated by fixed per-operation costs, not arithmetic. So the
generator asks this table for a cheap guess of the next few characters and checks the whole
guess in one pass (`FrozenStep.extend`), keeping the longest prefix the model agrees with.
The table only changes how fast a caption comes out, never which caption: every kept
character is the one the model would have produced anyway.

The table maps the last k symbols (k = 6, backing off to 4, 3, 2) to the symbol that most
often followed them in the training captions. Contexts seen fewer than `min_count` times are
left out, which keeps the file a few MB.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.vocab import END, START

BITS = 7  # per symbol in a context key: the vocabulary has 72 < 128 symbols
ORDERS = (6, 4, 3, 2)  # context lengths, longest first


class DraftTableError(ValueError):
    """A draft table file that cannot be used with this model."""


@dataclass
class DraftTable:
    symbols: tuple[str, ...]  # the vocabulary it was built with
    keys: dict[int, np.ndarray]  # order -> sorted int64 context keys
    next_ids: dict[int, np.ndarray]  # order -> uint8 most frequent next symbol, aligned with keys

    def __post_init__(self) -> None:
        # Plain Python lists: one bisect per lookup is several times cheaper than a numpy
        # call on a scalar, and a draft is a handful of lookups per decoding step.
        self._keys = {k: v.tolist() for k, v in self.keys.items()}
        self._next = {k: v.tolist() for k, v in self.next_ids.items()}

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.keys.values())

    def guess(self, history: Sequence[int], length: int) -> list[int]:
        """Up to `length` likely next symbols after `history` (the caption so far, without
        <start>); stops early where no context matches or at <end>."""
        context = [START] * max(ORDERS) + list(history[-max(ORDERS) :])
        out: list[int] = []
        while len(out) < length:
            nxt = None
            for k in ORDERS:
                key = _key(context[-k:])
                keys = self._keys[k]
                i = bisect_left(keys, key)
                if i < len(keys) and keys[i] == key:
                    nxt = self._next[k][i]
                    break
            if nxt is None:
                break
            out.append(nxt)
            if nxt == END:
                break
            context.append(nxt)
        return out

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"keys_{k}": self.keys[k] for k in ORDERS} | {f"next_{k}": self.next_ids[k] for k in ORDERS}
        with open(path, "wb") as f:
            np.savez_compressed(f, symbols=np.array(self.symbols), **arrays)


def _key(symbols: Sequence[int]) -> int:
    key = 0
    for s in symbols:
        key = (key << BITS) | int(s)
    return key


def load_draft_table(path: Path, symbols: Sequence[str]) -> DraftTable:
    """Load a table and check it was built with the model's vocabulary."""
    try:
        with np.load(path) as z:
            table_symbols = tuple(str(s) for s in z["symbols"])
            keys = {k: z[f"keys_{k}"].astype(np.int64) for k in ORDERS}
            next_ids = {k: z[f"next_{k}"].astype(np.uint8) for k in ORDERS}
    except (OSError, KeyError, ValueError) as exc:
        raise DraftTableError(f"{path}: not a readable draft table ({exc})") from exc
    if table_symbols != tuple(symbols):
        raise DraftTableError(
            f"{path} was built for a different vocabulary than the model's; rebuild it with `memebot draft`"
        )
    return DraftTable(table_symbols, keys, next_ids)


def build_draft_table(
    captions: Sequence[np.ndarray], symbols: Sequence[str], min_count: int = 3
) -> DraftTable:
    """Count, for every context of every order, which symbol follows it most often.
    `captions`: each caption's symbol ids without <start>/<end>."""
    pad = max(ORDERS)
    # One long sequence: each caption preceded by `pad` <start> markers and followed by <end>.
    pieces = []
    for c in captions:
        pieces.append(np.full(pad, START, dtype=np.int64))
        pieces.append(np.asarray(c, dtype=np.int64))
        pieces.append(np.array([END], dtype=np.int64))
    seq = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    is_target = seq != START  # <start> is never a prediction target
    keys, next_ids = {}, {}
    for k in ORDERS:
        context = np.zeros_like(seq)
        for j in range(1, k + 1):  # symbol at distance j sits in the lowest bits last
            shifted = np.concatenate([np.full(j, START, dtype=np.int64), seq[:-j]])
            context |= shifted << (BITS * (j - 1))
        pairs = (context[is_target] << BITS) | seq[is_target]
        unique, counts = np.unique(pairs, return_counts=True)
        ctx, nxt = unique >> BITS, unique & ((1 << BITS) - 1)
        # Per context: the total count, and the next symbol with the highest count.
        order = np.lexsort((counts, ctx))
        ctx, nxt, counts = ctx[order], nxt[order], counts[order]
        starts = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]])
        totals = np.add.reduceat(counts, starts) if len(ctx) else counts
        last = np.r_[starts[1:] - 1, len(ctx) - 1] if len(ctx) else starts
        keep = totals >= min_count
        keys[k] = ctx[last][keep]
        next_ids[k] = nxt[last][keep].astype(np.uint8)
    return DraftTable(tuple(symbols), keys, next_ids)
