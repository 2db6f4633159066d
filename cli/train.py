"""`memebot train`: a caption model from a recipe, or fine-tuned on a ratings export."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cli.data import dataset_for
from common.config import Config


def register(sub: argparse._SubParsersAction) -> None:
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


def train_command(config: Config, args: argparse.Namespace) -> int:
    from training.train import load_recipe, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.finetune:
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
    dataset = dataset_for(config, args.data)
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


def finetune_command(config: Config, args: argparse.Namespace) -> int:
    import numpy as np

    from common.catalog import load_catalog
    from common.records import ExportError, read_export
    from model.checkpoint import load_checkpoint, save_checkpoint
    from model.vocab import Vocab
    from training.dataset import load_dataset
    from training.evaluate import evaluate
    from training.finetune import EVAL_MEMES, finetune, rated_captions
    from training.train import resolve_device

    base_path = Path(args.init_from) if args.init_from else config.checkpoint_path
    try:
        rows = read_export(args.finetune)
    except (OSError, ExportError) as exc:
        print(f"memebot train --finetune: cannot read the export: {exc}", file=sys.stderr)
        return 2
    base = load_checkpoint(base_path)
    catalog = load_catalog(config.catalog_path)
    slug_to_dataset = {t.slug: t.dataset_name for t in catalog.templates}
    vocab = Vocab(tuple(base.vocab))
    examples = rated_captions(rows, slug_to_dataset, base, vocab)
    if not examples:
        print(
            "memebot train --finetune: no up-voted captions in the export (score > 0); nothing to learn",
            file=sys.stderr,
        )
        return 2
    dataset = load_dataset(args.data or config.dataset_dir, config.cache_dir)
    # The same fixed sample of the validation split before and after, so the two figures compare.
    val = np.random.default_rng(0).permutation(dataset.split(val=True))[:EVAL_MEMES]
    device = args.device or config.model.device
    before = evaluate(base.build(), dataset, val, base.templates, device=resolve_device(device)).overall
    tuned = finetune(base, examples, dataset, steps=args.max_steps or 200, lr=args.lr or 1e-4, device=device)
    after = evaluate(tuned.build(), dataset, val, tuned.templates, device=resolve_device(device)).overall
    tuned.metrics = {"val_subset_accuracy": after.accuracy, "val_subset_memes": after.memes}
    output = args.output or config.resolve(Path("runs/finetune/finetuned.pt"))
    save_checkpoint(tuned, output)
    print(
        f"fine-tuned on {len(examples)} rated captions ({len(rows)} rows in the export), {args.max_steps or 200} steps"
    )
    print(
        f"validation accuracy ({after.memes} memes): before {100 * before.accuracy:.2f}%  after {100 * after.accuracy:.2f}%"
    )
    print(
        f"bits per character:                 before {before.bits_per_char:.3f}   after {after.bits_per_char:.3f}"
    )
    print(f"saved {output} (model id {tuned.model_id}); point [model] checkpoint at it to serve it")
    return 0
