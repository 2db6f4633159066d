"""`memebot render` (one meme from typed texts) and `memebot gallery` (every template on one sheet)."""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from bot.fonts import FontSet, anton_font
from bot.render import RenderedMeme, Renderer, RenderError, missing_note
from cli.pictures import template_argument
from common.catalog import CatalogError, Template, UnknownTemplate, load_catalog
from common.config import Config
from common.template import ImageError

# Output suffixes and the Pillow format each one asks for.
SUFFIX_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
GALLERY_JPEG_QUALITY = 82
# Memes are rendered at least this large, then shrunk: thumbnails show text at the size
# people see it relative to the picture, not blown up to stay legible in a tiny image.
GALLERY_RENDER_SIDE = 400
GALLERY_BACKGROUND = (24, 24, 24)
GALLERY_LABEL_COLOUR = (235, 235, 235)
# Dataset captions longer than this make a cramped thumbnail; shorter ones show the layout.
GALLERY_MAX_CAPTION_CHARS = 90
# The sheets go into the README: skip captions about politics or tragedy.
GALLERY_AVOID = re.compile(
    r"\b(?:trump|donald|hillary|clinton|obama|biden|bernie|president|democrat|republican|liberal|"
    r"conservative|gender|racist|racism|illegal|mexican|jail|wheelchair|cancer|ebola|covid|corona|virus|"
    r"quarantine|die|died|dead|death|kill|killed|suicide|slaughter|gun|shoot|nazi|hitler|terrorist|"
    r"religion|god|jesus|muslim|choke|daddy|sex|drug|popeyes)s?\b",
    re.IGNORECASE,
)
# People's captions about the site itself are left out of the dataset sheet too; the model's are
# kept in its sheet, since a third of what it serves is about the site.
GALLERY_SITE_TALK = re.compile(r"\b(?:upvote|upvoted|imgflip|featured)s?\b", re.IGNORECASE)


class OutputError(ValueError):
    pass


def register(sub: argparse._SubParsersAction) -> None:
    render = sub.add_parser(
        "render",
        help="render a meme from your own texts",
        description="Render TEMPLATE with one text per box, in box order (`memebot templates` "
        "shows how many boxes each template has).",
    )
    render.add_argument(
        "template", metavar="TEMPLATE", help='template name, slug or alias, e.g. "drake"; or a picture file'
    )
    render.add_argument("texts", metavar="TEXT", nargs="*", help="box texts, in box order")
    render.add_argument(
        "-o", "--output", type=Path, help="image file (.png or .jpg; default: <output_dir>/<template>.<ext>)"
    )
    render.add_argument("--as-typed", action="store_true", help="keep the case you typed (no upper-casing)")
    render.add_argument("--max-side", type=int, help="longest side in px (default: [render] max_side)")
    render.set_defaults(handler=run_render)

    gallery = sub.add_parser(
        "gallery",
        help="contact sheet of every template with a typical caption",
        description="Render every catalog template with a typical dataset caption onto one sheet.",
    )
    gallery.add_argument(
        "-o", "--output", type=Path, default=Path("gallery.png"), help="image file (.png or .jpg)"
    )
    gallery.add_argument("--columns", type=int, default=10, help="templates per row (default 10)")
    gallery.add_argument("--cell", type=int, default=320, help="thumbnail size in px (default 320)")
    gallery.add_argument(
        "--quality",
        type=int,
        default=GALLERY_JPEG_QUALITY,
        help=f"JPEG quality (default {GALLERY_JPEG_QUALITY})",
    )
    gallery.add_argument(
        "--model",
        action="store_true",
        help="captions the model writes, as the bot serves them (no prefix), instead of dataset ones",
    )
    gallery.add_argument("--checkpoint", type=Path, help="with --model: default the configured model")
    gallery.add_argument("--seed", type=int, default=0, help="with --model: fixes the sampling (default 0)")
    gallery.set_defaults(handler=run_gallery)


def _error(command: str, message: object) -> int:
    print(f"memebot {command}: {message}", file=sys.stderr)
    return 2


def make_renderer(config: Config, max_side: int | None = None) -> Renderer:
    return Renderer(
        config.template_images_dir,
        max_side=max_side or config.render.max_side,
        fallback_fonts=[config.resolve(p) for p in config.render.fallback_fonts],
        uppercase=config.render.uppercase,
    )


def output_path(
    requested: Path | None, default_dir: Path, slug: str, image: RenderedMeme
) -> tuple[Path, str]:
    """Where to write the meme and in which Pillow format: the suffix asked for wins."""
    if requested is None:
        return default_dir / f"{slug}{image.extension}", image.format.upper()
    suffix = requested.suffix.lower()
    if not suffix:
        return requested.with_name(requested.name + image.extension), image.format.upper()
    if suffix not in SUFFIX_FORMATS:
        raise OutputError(f"cannot write {requested.name}: use a .png or .jpg file name")
    return requested, SUFFIX_FORMATS[suffix]


def encoded_as(image: RenderedMeme, pil_format: str) -> bytes:
    """The meme's bytes in `pil_format`, re-encoded only if it differs."""
    if pil_format == image.format.upper():
        return image.data
    out = io.BytesIO()
    Image.open(io.BytesIO(image.data)).save(
        out, pil_format, **({"quality": 90} if pil_format == "JPEG" else {})
    )
    return out.getvalue()


def run_render(config: Config, args: argparse.Namespace) -> int:
    if args.max_side is not None and args.max_side < 64:
        return _error("render", "--max-side must be at least 64")
    try:
        catalog = load_catalog(config.catalog_path)
        chosen = template_argument(args.template, catalog, config.template_images_dir, config.cache_dir)
    except (CatalogError, UnknownTemplate, ImageError) as exc:
        return _error("render", exc)
    template = chosen.template
    if chosen.recognized:
        print(f"template: {template.slug}")
    try:
        image = make_renderer(config, args.max_side).render(
            template, args.texts, uppercase=False if args.as_typed else None
        )
        path, pil_format = output_path(
            args.output, config.resolve(config.paths.output_dir), chosen.label, image
        )
    except (RenderError, OutputError) as exc:
        return _error("render", exc)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encoded_as(image, pil_format))
    except OSError as exc:
        return _error("render", f"cannot write {path}: {exc}")
    print(path)
    note = missing_note(image.missing)
    if note:
        print(f"memebot render: {note}", file=sys.stderr)
    return 0


# --- gallery ------------------------------------------------------------------------------


def _votes(meme: dict) -> int:
    raw = str(meme.get("metadata", {}).get("img-votes", "0")).replace(",", "")
    return int(raw) if raw.isdigit() else 0


def avoided(text: str) -> bool:
    """A caption the README's sheets leave out: on GALLERY_AVOID's topics, or profane."""
    from better_profanity import profanity  # slow to import: only the gallery needs it

    return bool(GALLERY_AVOID.search(text)) or profanity.contains_profanity(text)


def generic_caption(n_boxes: int) -> list[str]:
    """A stand-in caption for templates without data."""
    if n_boxes == 2:
        return ["top text", "bottom text"]
    if n_boxes == 1:
        return ["when the meme has no caption yet"]
    return [f"text {i}" for i in range(1, n_boxes + 1)]


def typical_caption(template: Template, dataset_dir: Path) -> list[str]:
    """A highly voted, clean, not-too-long dataset caption that fills every box of the layout."""
    path = dataset_dir / "memes" / f"{template.dataset_name}.json"
    if not template.has_data or not path.is_file():
        return generic_caption(len(template.boxes))
    try:
        memes = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return generic_caption(len(template.boxes))
    n = len(template.boxes)
    candidates = [
        m
        for m in memes
        if isinstance(m, dict)
        and isinstance(m.get("boxes"), list)
        and len(m["boxes"]) == n
        and all(isinstance(b, str) and b.strip() for b in m["boxes"])
        and sum(len(b) for b in m["boxes"]) <= GALLERY_MAX_CAPTION_CHARS
    ]
    for meme in sorted(candidates, key=_votes, reverse=True):
        text = " ".join(meme["boxes"])
        if not avoided(text) and not GALLERY_SITE_TALK.search(text):
            return list(meme["boxes"])
    return generic_caption(n)


def model_captions(
    config: Config, templates: Sequence[Template], checkpoint: Path, seed: int
) -> list[list[str]]:
    """A caption for each template as the bot serves it without a prefix (the config's
    `[generation]`, the catalog's caption plan), seeded. The sheet goes into the README: a candidate on the avoided
    topics, or profane, gives way to the next one in the bot's order, when there is one."""
    from training.quality import load_served_generator, planned_request

    generator = load_served_generator(config, checkpoint)
    rng = random.Random(seed)
    plans = [t.caption_plan("", rng) for t in templates]
    requests = [
        planned_request(config, t, plan, seed * 1_000_003 + k)
        for k, (t, plan) in enumerate(zip(templates, plans, strict=True))
    ]
    answers = [generator.generate_batch(requests[i : i + 16]) for i in range(0, len(requests), 16)]
    captions = []
    for template, plan, result in zip(templates, plans, [r for a in answers for r in a], strict=True):
        arranged = [plan.arrange(list(c.boxes)) for c in result.captions]
        candidates = arranged or [[""] * len(template.boxes)]
        fit = [c for c in candidates if not avoided(" ".join(c))]
        captions.append((fit or candidates)[0])
    return captions


def contact_sheet(
    templates: Sequence[Template],
    captions: Sequence[list[str]],
    renderer: Renderer,
    *,
    columns: int,
    cell: int,
) -> Image.Image:
    """The templates rendered with their captions, in order, each labelled with its slug."""
    label_h = max(12, cell // 14)
    fonts = FontSet(anton_font())
    rows = math.ceil(len(templates) / columns)
    sheet = Image.new("RGB", (columns * cell, rows * (cell + label_h)), GALLERY_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, (template, caption) in enumerate(zip(templates, captions, strict=True)):
        left, top = (i % columns) * cell, (i // columns) * (cell + label_h)
        try:
            meme = renderer.render(template, caption)
            thumb = Image.open(io.BytesIO(meme.data)).convert("RGB")
        except RenderError as exc:
            print(f"memebot gallery: {template.slug}: {exc}", file=sys.stderr)
            continue
        thumb.thumbnail((cell, cell), Image.Resampling.LANCZOS)
        sheet.paste(thumb, (left + (cell - thumb.width) // 2, top + (cell - thumb.height) // 2))
        size = round(label_h * 0.8)
        while size > 6 and fonts.width(template.slug, size) > cell - 8:  # long slugs: smaller type
            size -= 1
        draw.text(
            (left + cell / 2, top + cell + label_h / 2),
            template.slug,
            font=fonts.font(0, size),
            fill=GALLERY_LABEL_COLOUR,
            anchor="mm",
        )
    return sheet


def run_gallery(config: Config, args: argparse.Namespace) -> int:
    if args.columns < 1 or args.cell < 64 or not 1 <= args.quality <= 95:
        return _error("gallery", "--columns must be at least 1, --cell at least 64, --quality 1 to 95")
    pil_format = SUFFIX_FORMATS.get(args.output.suffix.lower())
    if pil_format is None:
        return _error("gallery", f"cannot write {args.output.name}: use a .png or .jpg file name")
    try:
        catalog = load_catalog(config.catalog_path)
    except CatalogError as exc:
        return _error("gallery", exc)
    templates = catalog.templates
    if args.model:
        from model.checkpoint import CheckpointError

        try:
            captions = model_captions(config, templates, args.checkpoint or config.checkpoint_path, args.seed)
        except CheckpointError as exc:
            return _error("gallery", f"no model yet ({exc})")
    else:
        captions = [typical_caption(t, config.dataset_dir) for t in templates]
    renderer = make_renderer(config, max(args.cell, GALLERY_RENDER_SIDE))
    sheet = contact_sheet(templates, captions, renderer, columns=args.columns, cell=args.cell)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": args.quality, "optimize": True, "progressive": True} if pil_format == "JPEG" else {}
    sheet.save(args.output, pil_format, **options)
    print(f"{args.output} ({len(catalog.templates)} templates, {sheet.width}x{sheet.height})")
    return 0
