"""`memebot lexicon`: build the word lexicon that decoding spells along (model/lexicon.py).

The lexicon is the words of the training split's captions used at least --min-count times,
written next to the model (`[model] lexicon`, data/models/memebot-lexicon.txt.gz). Rebuild it
when the training data changes; the shipped file was built with the defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lexicon", help="build the word lexicon decoding spells along (no non-words)")
    p.add_argument(
        "--data", type=Path, help="ImgFlip575K-layout folder or packed file (default: from config)"
    )
    p.add_argument("--output", "-o", type=Path, help="default: the configured [model] lexicon path")
    p.add_argument("--min-count", type=int, default=3, help="leave out words used fewer times (default 3)")
    p.set_defaults(handler=lexicon_command)


def caption_texts(tokens, offsets, indices, symbols) -> list[str]:  # noqa: ANN001 (numpy arrays)
    """The captions `indices` of a packed dataset as texts, boxes on separate lines."""
    import numpy as np

    codes = np.zeros(256, dtype=np.uint8)
    for i, s in enumerate(symbols):
        codes[i] = ord(s) if len(s) == 1 else ord("\n")
    text = codes[tokens].tobytes().decode("ascii")
    starts, ends = offsets[indices], offsets[np.asarray(indices) + 1]
    return [text[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


def lexicon_command(config: Config, args: argparse.Namespace) -> int:
    # The data loader lives with the training code; only this command needs it.
    from model.lexicon import build_lexicon, caption_hash
    from model.vocab import Vocab
    from training.dataset import load_dataset

    if args.min_count < 1:
        print("memebot lexicon: --min-count must be at least 1", file=sys.stderr)
        return 2
    dataset = load_dataset(args.data or config.dataset_dir, config.cache_dir)
    train = dataset.split(val=False)  # never the validation split: the quality report stays honest
    texts = caption_texts(dataset.tokens, dataset.offsets, train, Vocab().symbols)
    lexicon = build_lexicon(texts, args.min_count)
    lexicon.seen = frozenset(caption_hash(t.split("\n")) for t in texts)
    output = args.output or config.resolve(config.model.lexicon)
    lexicon.save(output)
    size = output.stat().st_size
    print(
        f"{len(lexicon)} words used at least {args.min_count} times in {len(texts)} training captions "
        f"({len(lexicon.seen)} distinct captions remembered): "
        f"{output} ({size / 1024:.0f} KiB)"
    )
    return 0
