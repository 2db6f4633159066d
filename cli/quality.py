"""`memebot quality`: captions as served, measured (training/quality.py does the work)."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    quality = sub.add_parser(
        "quality", help="captions as served, measured: non-words, repeats, copies, a discriminator"
    )
    quality.add_argument("--checkpoint", type=Path, help="default: the configured model")
    quality.add_argument("--baseline", type=Path, help="also measure this checkpoint, side by side")
    quality.add_argument("--n", type=int, default=1000, help="validation memes to caption (default 1000)")
    quality.add_argument("--json", action="store_true", help="print the report as JSON")
    quality.add_argument(
        "--pairs",
        type=Path,
        metavar="FILE",
        help="also write N blind pairs here, the answers to FILE.key.json",
    )
    quality.add_argument(
        "--judged",
        type=Path,
        metavar="ANSWERS",
        help='score a reader\'s answers to --pairs FILE (JSON list of {"pair", "person", "A", "B"}); '
        "generates nothing",
    )
    quality.add_argument("--data", type=Path, help="ImgFlip575K-layout folder (default: from config)")
    quality.add_argument("--seed", type=int, default=0, help="picks the memes and fixes sampling (default 0)")
    quality.set_defaults(handler=quality_command)


def quality_command(config: Config, args: argparse.Namespace) -> int:
    from training.quality import quality_command as run_quality

    return run_quality(config, args)
