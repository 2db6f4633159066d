"""`memebot generate TEMPLATE [PREFIX] -o meme.png`: the model's captions, rendered, from the shell."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.config import Config
from model.requests import DECODING_METHODS, METHODS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="complete a caption with the model and render the meme")
    p.add_argument("template", help="template slug, name or alias, e.g. change-my-mind")
    p.add_argument("prefix", nargs="?", default="", help='start of the caption; "|" moves to the next box')
    p.add_argument(
        "-o", "--output", type=Path, help="write the meme here (with --n 3: meme-1.png, meme-2.png, ...)"
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        help="; ".join(f"{m.name}: {m.help}" for m in DECODING_METHODS) + " (default: from config)",
    )
    p.add_argument("--n", type=int, default=1, help="how many candidates (default 1)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: from config)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--beam-width", type=int)
    p.add_argument("--seed", type=int, help="fix the random draws")
    p.add_argument("--checkpoint", type=Path, help="default: the configured model")
    p.add_argument("--as-typed", action="store_true", help="keep the caption's case instead of the layout's")
    p.set_defaults(handler=generate_command)


def _numbered(path: Path, i: int, n: int) -> Path:
    return path if n == 1 else path.with_name(f"{path.stem}-{i + 1}{path.suffix}")


def generate_command(config: Config, args: argparse.Namespace) -> int:
    from bot.app import usable_draft, usable_lexicon
    from bot.render import box_count_error
    from cli.render import OutputError, encoded_as, make_renderer, output_path
    from common.catalog import UnknownTemplate, load_catalog
    from model.checkpoint import CheckpointError
    from model.draft import DraftTableError
    from model.generate import load_generator
    from model.requests import GenerationRequest

    catalog = load_catalog(config.catalog_path)
    try:
        template = catalog.lookup(args.template)
    except UnknownTemplate as exc:
        print(f"memebot generate: {exc}", file=sys.stderr)
        return 2
    if not 1 <= args.n <= 20:
        print("memebot generate: --n must be between 1 and 20", file=sys.stderr)
        return 2
    too_many = box_count_error(template, args.prefix.count("|") + 1 if args.prefix else 0, "|")
    if too_many:  # never merged into the last box
        print(f"memebot generate: {too_many}", file=sys.stderr)
        return 2
    checkpoint = args.checkpoint or config.checkpoint_path
    g = config.generation

    def notice(text: str) -> None:
        print(f"memebot generate: {text}", file=sys.stderr)

    try:
        draft = usable_draft(config, notice)
        generator = load_generator(
            checkpoint,
            device="cpu",
            threads=config.model.threads,
            draft=draft,
            half_weights=config.model.half_weights,
            kernel_dir=config.kernel_dir,
            lexicon=usable_lexicon(config, notice) if g.lexicon else None,
        )
    except CheckpointError as exc:
        print(f"memebot generate: no model yet ({exc})", file=sys.stderr)
        return 1
    except DraftTableError as exc:
        print(f"memebot generate: {exc}", file=sys.stderr)
        return 1
    request = GenerationRequest(
        template=template.dataset_name,
        prefix=args.prefix,
        method=args.method or g.method,
        temperature=args.temperature if args.temperature is not None else g.temperature,
        top_k=args.top_k if args.top_k is not None else g.top_k,
        top_p=args.top_p if args.top_p is not None else g.top_p,
        beam_width=max(args.beam_width or g.beam_width, args.n),
        max_length=g.max_length,
        n=args.n,
        seed=args.seed,
        n_boxes=len(template.boxes),
        lexicon=g.lexicon,
        block_repeats=g.block_repeats,
        best_of=g.best_of,
        rank_length_power=g.rank_length_power,
    )
    try:
        (result,) = generator.generate_batch([request])
    except ValueError as exc:
        print(f"memebot generate: {exc}", file=sys.stderr)
        return 2
    renderer = make_renderer(config) if args.output else None
    captions = result.captions[: args.n]  # best of N: the n best candidates
    for i, caption in enumerate(captions):
        print(caption.text)
        if renderer is None:
            continue
        image = renderer.render(template, caption.boxes, uppercase=False if args.as_typed else None)
        try:
            wanted = _numbered(args.output, i, len(captions))
            path, pil_format = output_path(wanted, Path("."), template.slug, image)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encoded_as(image, pil_format))
        except (OutputError, OSError) as exc:
            print(f"memebot generate: {exc}", file=sys.stderr)
            return 2
        print(f"  -> {path}")
    return 0
