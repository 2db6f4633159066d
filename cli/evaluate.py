"""`memebot eval`: teacher-forced next-character accuracy, the comparison protocol."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.data import dataset_for
from common.config import Config


def register(sub: argparse._SubParsersAction) -> None:
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
        dataset = dataset_for(config, args.data)
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
