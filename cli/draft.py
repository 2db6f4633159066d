"""`memebot draft`: the n-gram table that speeds up decoding (speculation)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.data import dataset_for
from common.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    draft = sub.add_parser("draft", help="build the n-gram table that speeds up decoding (speculation)")
    draft.add_argument("--data", type=Path, help="ImgFlip575K-layout folder (default: from config)")
    draft.add_argument("--output", "-o", type=Path, help="default: the configured [model] draft path")
    draft.add_argument("--min-count", type=int, default=3, help="leave out contexts seen fewer times")
    draft.set_defaults(handler=draft_command)


def draft_command(config: Config, args: argparse.Namespace) -> int:
    from model.draft import build_draft_table
    from model.vocab import Vocab

    if args.min_count < 1:
        print("memebot draft: --min-count must be at least 1", file=sys.stderr)
        return 2
    dataset = dataset_for(config, args.data)
    train_memes = dataset.split(val=False)  # never the validation split: eval stays honest
    table = build_draft_table([dataset.caption(i) for i in train_memes], Vocab().symbols, args.min_count)
    output = args.output or config.resolve(config.model.draft)
    table.save(output)
    print(f"{table.size} contexts from {len(train_memes)} training memes: {output}")
    return 0
