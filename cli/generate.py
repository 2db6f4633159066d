"""`memebot generate TEMPLATE [PREFIX] -o meme.png`: the model's captions, rendered, from the shell.

TEMPLATE may be a picture file: the catalog template it shows when recognised, else the picture
itself. When TEMPLATE names no template (a whole name, alias or close typo, as a chat's /meme
reads its first word) and is not a near miss of one, it is the caption's first words and the
model picks the template from TEMPLATE + PREFIX (model/pick.py). The first line printed is then
`template: <slug>`, as it is whenever the template was recognised in a picture or from something
other than its slug.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from pathlib import Path

from common.catalog import Catalog
from common.config import Config
from model.requests import DECODING_METHODS, METHODS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="complete a caption with the model and render the meme")
    p.add_argument(
        "template",
        help="template slug, name or alias, e.g. change-my-mind; a picture file; or the caption's "
        "first words, and the model picks the template",
    )
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


def mistyped_name(catalog: Catalog, text: str) -> bool:
    """A single word near a template's name ("gru", "cat", "nobody"): more likely a name cut
    short or mistyped than a caption, so it is refused with suggestions, not captioned. Whatever
    else `lookup` refuses is the caption's first words."""
    return len(text.split()) <= 1 and (not text.strip() or bool(catalog.search(text, limit=1)))


def generate_command(config: Config, args: argparse.Namespace) -> int:
    from bot.app import usable_draft, usable_lexicon
    from bot.render import box_count_error
    from cli.pictures import template_argument
    from cli.render import OutputError, encoded_as, make_renderer, output_path
    from common.catalog import UnknownTemplate, load_catalog
    from common.content_filter import ContentFilter
    from common.template import ImageError
    from model.checkpoint import CheckpointError
    from model.draft import DraftTableError
    from model.generate import load_generator
    from model.requests import GenerationRequest, choose_template

    catalog = load_catalog(config.catalog_path)
    prefix = args.prefix
    label = ""
    try:  # a picture file (recognised, or the picture itself), or a name the chat would take
        chosen = template_argument(args.template, catalog, config.template_images_dir, config.cache_dir)
        template, label = chosen.template, chosen.file_stem
        if not chosen.file_stem and catalog.named(args.template) is None:
            raise UnknownTemplate(args.template, catalog.suggestions(args.template))
    except ImageError as exc:
        print(f"memebot generate: {exc}", file=sys.stderr)
        return 2
    except UnknownTemplate as exc:
        prefix = " ".join(part for part in (args.template.strip(), args.prefix.strip()) if part)
        if catalog.by_phrase(prefix) is None and mistyped_name(catalog, args.template):
            print(f"memebot generate: {exc}", file=sys.stderr)
            return 2
        template = None  # the model picks it from the whole text
    if not 1 <= args.n <= 20:
        print("memebot generate: --n must be between 1 and 20", file=sys.stderr)
        return 2
    given_boxes = prefix.count("|") + 1 if prefix else 0
    too_many = box_count_error(template, given_boxes, "|") if template is not None else None
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
    phrased = catalog.by_phrase(prefix) if template is None else None
    if phrased is not None and len(phrased.boxes) >= given_boxes:
        template = phrased  # its set phrase names it, as in a chat
    if template is None:
        # Only templates with a box for each of the text's boxes can take it.
        fitting = {t.dataset_name: t for t in catalog.templates if len(t.boxes) >= given_boxes}
        scores = generator.score_templates(prefix, list(fitting))
        if not scores.templates:
            print(
                f'memebot generate: no template "{args.template}", and the model knows no template '
                f"with {given_boxes} boxes to pick for it",
                file=sys.stderr,
            )
            return 2
        template = fitting[choose_template(scores, random.Random(args.seed))]
    if not template.is_upload and template.slug != args.template.strip():  # picked or recognised
        print(f"template: {template.slug}")
    content_filter = ContentFilter.from_config(config.filter) if config.filter.enabled else None
    plan = template.caption_plan(prefix, random.Random(args.seed))  # as the bot asks for it
    request = GenerationRequest(
        template=plan.model_template,
        prefix=plan.prefix,
        method=args.method or g.method,
        temperature=args.temperature if args.temperature is not None else g.temperature,
        top_k=args.top_k if args.top_k is not None else g.top_k,
        top_p=args.top_p if args.top_p is not None else g.top_p,
        beam_width=max(args.beam_width or g.beam_width, args.n),
        max_length=g.max_length,
        n=args.n,
        seed=args.seed,
        n_boxes=plan.model_boxes(len(template.boxes)),
        fill_boxes=plan.fill_boxes,
        lexicon=g.lexicon,
        block_repeats=g.block_repeats,
        best_of=g.best_of,
        rank_length_power=g.rank_length_power,
        # The bot's content filter, as a chat without settings of its own has it.
        banned_words=content_filter.banned if content_filter is not None else (),
    )
    try:
        (result,) = generator.generate_batch([request])
    except ValueError as exc:
        print(f"memebot generate: {exc}", file=sys.stderr)
        return 2
    renderer = make_renderer(config) if args.output else None
    captions = result.captions
    if content_filter is not None:  # a banned phrase across words: the candidates saying it go
        captions = [c for c in captions if content_filter.find(c.text) is None] or [
            dataclasses.replace(c, boxes=[content_filter.mask(b) for b in c.boxes]) for c in captions[:1]
        ]
    captions = [dataclasses.replace(c, boxes=plan.arrange(c.boxes)) for c in captions[: args.n]]  # best of N
    for i, caption in enumerate(captions):
        print(caption.text)
        if renderer is None:
            continue
        image = renderer.render(template, caption.boxes, uppercase=False if args.as_typed else None)
        try:
            wanted = _numbered(args.output, i, len(captions))
            path, pil_format = output_path(wanted, Path("."), label or template.slug, image)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encoded_as(image, pil_format))
        except (OutputError, OSError) as exc:
            print(f"memebot generate: {exc}", file=sys.stderr)
            return 2
        print(f"  -> {path}")
    return 0
