"""`memebot data stats` and `memebot data pack`: what the dataset keeps, and one file to carry it."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    stats = data_sub.add_parser("stats", help="memes kept and dropped per template, and why")
    stats.add_argument(
        "--data", type=Path, help="ImgFlip575K-layout folder or packed file (default: from config)"
    )
    stats.set_defaults(handler=data_stats)
    pack = data_sub.add_parser(
        "pack", help="write the kept memes as one file that --data accepts (to train on another machine)"
    )
    pack.add_argument("--data", type=Path, help="ImgFlip575K-layout folder (default: from config)")
    pack.add_argument("--output", "-o", type=Path, default=Path("pack/imgflip575k.npz"))
    pack.set_defaults(handler=data_pack)


def dataset_for(config: Config, data: Path | None):
    from training.dataset import load_dataset

    return load_dataset(data or config.dataset_dir, config.cache_dir)


def data_stats(config: Config, args: argparse.Namespace) -> int:
    dataset = dataset_for(config, args.data)
    reasons = sorted({r for s in dataset.stats.values() for r in s.dropped})
    print(f"{'template':<48} {'kept':>7} " + " ".join(f"{r[:18]:>18}" for r in reasons))
    for name, s in sorted(dataset.stats.items()):
        print(f"{name[:48]:<48} {s.kept:>7} " + " ".join(f"{s.dropped.get(r, 0):>18}" for r in reasons))
    kept = sum(s.kept for s in dataset.stats.values())
    dropped = {r: sum(s.dropped.get(r, 0) for s in dataset.stats.values()) for r in reasons}
    print(f"{'total':<48} {kept:>7} " + " ".join(f"{dropped[r]:>18}" for r in reasons))
    n_val = int(dataset.is_val.sum())
    print(
        f"\n{kept} memes kept, {sum(dropped.values())} dropped; split: {kept - n_val} train / {n_val} validation"
    )
    return 0


def data_pack(config: Config, args: argparse.Namespace) -> int:
    from training.dataset import save_packed

    dataset = dataset_for(config, args.data)
    save_packed(dataset, args.output)
    size = args.output.stat().st_size / 2**20
    print(f"{len(dataset)} memes ({dataset.fingerprint[:12]}), {size:.0f} MiB: {args.output}")
    print(f"train anywhere with: memebot train --data {args.output} ...")
    return 0
