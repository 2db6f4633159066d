"""`memebot data stats`, `memebot train`, `memebot eval`, `memebot quality`, `memebot draft`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bot.config import Config


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

    train = sub.add_parser("train", help="train a caption model (resumes an interrupted run)")
    train.add_argument("--recipe", type=Path, help="recipe TOML (e.g. training/recipes/transformer.toml)")
    train.add_argument("--arch", choices=("cnn", "lstm", "transformer"), help="overrides the recipe")
    train.add_argument("--run-dir", type=Path, help="where checkpoints and curves go (default runs/<arch>)")
    train.add_argument("--max-steps", type=int)
    train.add_argument("--max-minutes", type=float)
    train.add_argument("--eval-every", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--init-from", help="start from this checkpoint's weights")
    train.add_argument("--data", type=Path, help="ImgFlip575K-layout folder (default: from config)")
    train.add_argument("--device", help="auto | cpu | cuda (default: from config)")
    train.add_argument("--threads", type=int, help="CPU threads (default: from config)")
    train.add_argument(
        "--finetune", type=Path, metavar="EXPORT", help="fine-tune the shipped model on a ratings export"
    )
    train.add_argument("--output", "-o", type=Path, help="copy the best checkpoint here when done")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=train_command)

    ev = sub.add_parser("eval", help="teacher-forced next-character accuracy (the comparison protocol)")
    ev.add_argument("--checkpoint", type=Path, help="default: the configured model")
    ev.add_argument("--data", type=Path, help="ImgFlip575K-layout folder (default: from config)")
    ev.add_argument(
        "--split",
        choices=("val", "train", "all"),
        default="val",
        help="val: our validation split (default); all: every kept meme of the folder",
    )
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.add_argument("--batch-size", type=int, default=128)
    ev.add_argument("--device", help="auto | cpu | cuda (default: from config)")
    ev.add_argument(
        "--quantize", action="store_true", help="score the int8 dynamically quantised model (CPU)"
    )
    ev.add_argument(
        "--half-weights",
        action="store_true",
        help="score with the Linear weights rounded to fp16, as [model] half_weights serves them",
    )
    ev.add_argument(
        "--limit", type=int, default=0, help="score only the first N memes of a fixed shuffle (0 = all)"
    )
    ev.add_argument("--record", action="store_true", help="store the overall figures in the checkpoint file")
    ev.set_defaults(handler=eval_command)

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

    draft = sub.add_parser("draft", help="build the n-gram table that speeds up decoding (speculation)")
    draft.add_argument("--data", type=Path, help="ImgFlip575K-layout folder (default: from config)")
    draft.add_argument("--output", "-o", type=Path, help="default: the configured [model] draft path")
    draft.add_argument("--min-count", type=int, default=3, help="leave out contexts seen fewer times")
    draft.set_defaults(handler=draft_command)


def _dataset(config: Config, data: Path | None):
    from training.dataset import load_dataset

    return load_dataset(data or config.dataset_dir, config.cache_dir)


def data_stats(config: Config, args: argparse.Namespace) -> int:
    dataset = _dataset(config, args.data)
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

    dataset = _dataset(config, args.data)
    save_packed(dataset, args.output)
    size = args.output.stat().st_size / 2**20
    print(f"{len(dataset)} memes ({dataset.fingerprint[:12]}), {size:.0f} MiB: {args.output}")
    print(f"train anywhere with: memebot train --data {args.output} ...")
    return 0


def train_command(config: Config, args: argparse.Namespace) -> int:
    from training.train import load_recipe, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.finetune:
        from training.finetune import finetune_command

        return finetune_command(config, args)
    overrides = {
        "arch": args.arch,
        "max_steps": args.max_steps,
        "max_minutes": args.max_minutes,
        "eval_every": args.eval_every,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "init_from": args.init_from,
    }
    try:
        recipe = load_recipe(args.recipe, overrides)
    except (OSError, ValueError) as exc:
        print(f"memebot train: {exc}", file=sys.stderr)
        return 2
    run_dir = args.run_dir or config.resolve(Path("runs") / recipe.arch)
    dataset = _dataset(config, args.data)
    best = train(
        recipe,
        dataset,
        run_dir,
        device=args.device or config.model.device,
        threads=args.threads or config.model.threads,
        progress=not args.quiet,
    )
    print(
        f"best validation-subset accuracy {100 * best.metrics['val_subset_accuracy']:.2f}%: {run_dir / 'best.pt'}"
    )
    if args.output:
        from model.checkpoint import save_checkpoint

        save_checkpoint(best, args.output)
        print(f"copied to {args.output}")
    return 0


def eval_command(config: Config, args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from model.checkpoint import CheckpointError, load_checkpoint
    from training.evaluate import evaluate
    from training.train import resolve_device

    path = args.checkpoint or config.checkpoint_path
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        print(f"memebot eval: {exc}", file=sys.stderr)
        return 2
    try:
        dataset = _dataset(config, args.data)
    except FileNotFoundError as exc:
        print(f"memebot eval: {exc}", file=sys.stderr)
        return 2
    if args.split == "all":
        indices = np.arange(len(dataset))
    else:
        indices = dataset.split(val=args.split == "val")
    if args.limit:
        indices = np.random.default_rng(0).permutation(indices)[: args.limit]
    device = resolve_device(args.device or config.model.device)
    torch.set_num_threads(config.model.threads)
    model = ckpt.build().to(device)
    if args.quantize:
        from model.generate import quantize_int8

        model = quantize_int8(model)
    if args.half_weights:
        from model.generate import round_weights_to_half

        round_weights_to_half(model)
    report = evaluate(
        model, dataset, indices, ckpt.templates, args.batch_size, device, progress=not args.json
    )
    if args.record:
        from model.checkpoint import save_checkpoint

        ckpt.metrics[f"eval_{args.split}"] = {
            "data_fingerprint": dataset.fingerprint,
            "memes_scored": len(indices),
            "quantized": args.quantize,
            "half_weights": args.half_weights,
            **report.to_dict()["overall"],
        }
        save_checkpoint(ckpt, path)
    if args.json:
        print(
            json.dumps(
                {"checkpoint": str(path), "model_id": ckpt.model_id, "split": args.split, **report.to_dict()},
                indent=2,
            )
        )
        return 0
    print(f"{'template':<48} {'memes':>7} {'accuracy':>9} {'bits/char':>9}")
    for name, t in sorted(report.per_template.items()):
        known = "" if ckpt.template_id(name) else " (unknown to model)"
        print(f"{(name + known)[:48]:<48} {t.memes:>7} {100 * t.accuracy:>8.2f}% {t.bits_per_char:>9.3f}")
    o = report.overall
    print(
        f"\n{ckpt.model_id} on {args.split}: {o.memes} memes, {o.positions} positions, "
        f"accuracy {100 * o.accuracy:.2f}%, {o.bits_per_char:.3f} bits/char"
    )
    return 0


def quality_command(config: Config, args: argparse.Namespace) -> int:
    from training.quality import quality_command as run_quality

    return run_quality(config, args)


def draft_command(config: Config, args: argparse.Namespace) -> int:
    from model.draft import build_draft_table
    from model.vocab import Vocab

    if args.min_count < 1:
        print("memebot draft: --min-count must be at least 1", file=sys.stderr)
        return 2
    dataset = _dataset(config, args.data)
    train_memes = dataset.split(val=False)  # never the validation split: eval stays honest
    table = build_draft_table([dataset.caption(i) for i in train_memes], Vocab().symbols, args.min_count)
    output = args.output or config.resolve(config.model.draft)
    table.save(output)
    print(f"{table.size} contexts from {len(train_memes)} training memes: {output}")
    return 0
