"""Build data/templates.toml from the dataset's metadata, keeping the hand-checked layouts.

The metadata of each of the 100 popular templates (name, imgflip id, aliases, image size,
whether caption data exists) comes from the dataset and the template images. The text-box
layouts are authored by hand in the TOML itself: a rerun keeps every template's boxes from
the configured catalog and gives a template without any a plain top/bottom layout with the
dataset's usual box count, to be placed by hand afterwards.

    python -m training.make_catalog              # refresh config.catalog_path in place
    python -m training.make_catalog -o new.toml  # write elsewhere (layouts still from the catalog)
    python -m training.make_catalog --check      # only compare box counts with the data
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from PIL import Image

from common.catalog import CatalogError, load_catalog, normalize_name, parse_catalog
from common.config import ConfigError, load_config
from common.template import Box, CatalogImage, Template

POPULAR_CSV = "popular_100_memes.csv"
# The CSV comes from a Windows export: curly apostrophes are cp1252 bytes.
POPULAR_CSV_ENCODING = "cp1252"


def slugify(name: str) -> str:
    """The kebab-case slug of a display name: "Y'all Got Any More Of That" -> "yall-got-any-more-of-that"."""
    return "-".join(normalize_name(name).split())


# A layout offers the boxes people fill: as many as 80% of a template's memes stay within, and
# any count that at least this share of them use (two-buttons' sweating man: 17% use a third).
BOX_PERCENTILE = 0.8
BOX_OFTEN = 0.15


def boxes_people_fill(memes_file: Path) -> int | None:
    """How many boxes a template's layout should offer, from its memes (None: no data)."""
    if not memes_file.exists():
        return None
    memes = json.loads(memes_file.read_text(encoding="utf-8"))
    counts = Counter(len(m.get("boxes") or []) for m in memes if isinstance(m, dict))
    total = sum(counts.values())
    if not total:
        return None
    seen, within = 0, 0
    for n in sorted(counts):
        seen += counts[n]
        if seen >= BOX_PERCENTILE * total:
            within = n
            break
    often = max((n for n, c in counts.items() if c >= BOX_OFTEN * total), default=0)
    return max(within, often)


def default_boxes(count: int) -> tuple[Box, ...]:
    """A starting layout: one box on top, two as top/bottom, more stacked down the image."""
    if count == 1:
        return (Box(0.02, 0.02, 0.96, 0.26),)
    if count == 2:
        return (Box(0.02, 0.02, 0.96, 0.22), Box(0.02, 0.76, 0.96, 0.22))
    step = 1.0 / count
    return tuple(Box(0.02, round(i * step + 0.01, 3), 0.96, round(step - 0.02, 3)) for i in range(count))


def _split_names(*fields: str) -> list[str]:
    return [part.strip().lower() for f in fields for part in (f or "").split(",") if part.strip()]


def read_templates(dataset_dir: Path, images_dir: Path) -> list[Template]:
    """The popular templates in the CSV's order, with dataset metadata and the images' real sizes.

    Boxes are left empty here: they come from the existing catalog or `default_boxes`.
    """
    by_id: dict[int, tuple[str, str]] = {}
    for meta_file in sorted((dataset_dir / "templates").glob("*.json")):
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        by_id[int(meta["template_id"])] = (meta_file.stem, meta.get("alternative_names") or "")

    templates = []
    with open(dataset_dir / POPULAR_CSV, encoding=POPULAR_CSV_ENCODING, newline="") as f:
        for row in csv.DictReader(f):
            imgflip_id = int(row["ID"])
            stem, meta_aliases = by_id[imgflip_id]
            image = f"{stem}.jpg"
            with Image.open(images_dir / image) as img:
                width, height = img.size
            templates.append(
                Template(
                    slug=slugify(row["Name"]),
                    name=row["Name"].strip(),
                    imgflip_id=imgflip_id,
                    dataset_name=stem,
                    image=CatalogImage(image),
                    width=width,
                    height=height,
                    aliases=tuple(_split_names(row["Alternate Names"], meta_aliases)),
                    has_data=(dataset_dir / "memes" / f"{stem}.json").exists(),
                    boxes=(),
                )
            )
    return clean_aliases(templates)


def clean_aliases(templates: Sequence[Template]) -> list[Template]:
    """Aliases deduplicated, minus any that repeat a template's own name or could mean another one.

    "waiting skeleton" is listed as an alias of I'll Just Wait Here but is the name of Waiting
    Skeleton; "nobody cares" (Imagination Spongebob) is part of the name See Nobody Cares;
    "crying woman" is listed for two templates. Each would send lookups to the wrong template.
    """
    primary = {t.slug: {normalize_name(n) for n in (t.slug, t.name, t.dataset_name)} for t in templates}

    def names_another(key: str, slug: str) -> bool:
        return any(
            f" {key} " in f" {name} " for other, names in primary.items() if other != slug for name in names
        )

    owners: Counter[str] = Counter()
    kept: dict[str, dict[str, str]] = {}
    for t in templates:
        unique: dict[str, str] = {}
        for alias in t.aliases:
            key = normalize_name(alias)
            if key and key not in unique and key not in primary[t.slug]:
                unique[key] = alias
        kept[t.slug] = unique
        owners.update(unique.keys())
    cleaned = []
    for t in templates:
        aliases = tuple(
            a for key, a in kept[t.slug].items() if owners[key] == 1 and not names_another(key, t.slug)
        )
        dropped = sorted(set(kept[t.slug].values()) - set(aliases))
        if dropped:
            print(f"{t.slug}: dropped ambiguous aliases {dropped}", file=sys.stderr)
        cleaned.append(replace(t, aliases=aliases))
    return cleaned


def _toml_string(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(text, ensure_ascii=False)


def _toml_float(value: float) -> str:
    return repr(round(float(value), 4))


def format_catalog(templates: Sequence[Template]) -> str:
    """The catalog as TOML: one [[template]] table per template, one [[template.box]] per box."""
    lines = [
        "# Meme templates: metadata from the ImgFlip575K dataset, text-box layouts checked by hand",
        "# against each image. Box x, y, w, h are fractions of the image (top-left corner and size);",
        '# angle is in degrees counter-clockwise about the box centre; outline "" means none.',
        "# Regenerate the metadata with `python -m training.make_catalog` (layouts are kept).",
    ]
    for t in templates:
        aliases = ", ".join(_toml_string(a) for a in t.aliases)
        lines += [
            "",
            "[[template]]",
            f"slug = {_toml_string(t.slug)}",
            f"name = {_toml_string(t.name)}",
            f"imgflip_id = {t.imgflip_id}",
            f"dataset_name = {_toml_string(t.dataset_name)}",
            f"image = {_toml_string(t.image.file)}",
            f"width = {t.width}",
            f"height = {t.height}",
            f"aliases = [{aliases}]",
            f"has_data = {'true' if t.has_data else 'false'}",
        ]
        if t.caption_like:
            lines.append(f"caption_like = {_toml_string(t.caption_like)}")
        if t.caption_boxes:
            lines.append(f"caption_boxes = [{', '.join(map(str, t.caption_boxes))}]")
        if t.openings:
            lines.append(f"openings = [{', '.join(_toml_string(o) for o in t.openings)}]")
        if t.closing:
            lines.append(f"closing = {_toml_string(t.closing)}")
        for b in t.boxes:
            lines += [
                "",
                "[[template.box]]",
                f"x = {_toml_float(b.x)}",
                f"y = {_toml_float(b.y)}",
                f"w = {_toml_float(b.w)}",
                f"h = {_toml_float(b.h)}",
                f"align = {_toml_string(b.align)}",
                f"color = {_toml_string(b.color)}",
                f"outline = {_toml_string(b.outline)}",
            ]
            if b.angle:
                lines.append(f"angle = {_toml_float(b.angle)}")
            lines.append(f"uppercase = {'true' if b.uppercase else 'false'}")
    return "\n".join(lines) + "\n"


def build(dataset_dir: Path, images_dir: Path, existing: Path | None) -> list[Template]:
    """Fresh metadata merged with what was written by hand in `existing` (matched by dataset
    name): the layouts, and how a template without data is captioned."""
    kept: dict[str, Template] = {}
    if existing is not None and existing.exists():
        kept = {t.dataset_name: t for t in load_catalog(existing).templates}
    templates = []
    for t in read_templates(dataset_dir, images_dir):
        old = kept.get(t.dataset_name)
        boxes = old.boxes if old is not None else ()
        if not boxes:
            count = boxes_people_fill(dataset_dir / "memes" / f"{t.dataset_name}.json") or 2
            boxes = default_boxes(count)
            print(f"{t.slug}: new template, {count} placeholder boxes to place by hand", file=sys.stderr)
        t = replace(t, boxes=boxes)
        if old is not None and not t.has_data:
            t = replace(
                t,
                caption_like=old.caption_like,
                caption_boxes=old.caption_boxes,
                openings=old.openings,
                closing=old.closing,
            )
        templates.append(t)
    return templates


def check_box_counts(templates: Sequence[Template], dataset_dir: Path) -> list[str]:
    """One line per template whose layout has fewer boxes than people fill on it (boxes may
    stay empty, so more is fine)."""
    problems = []
    for t in templates:
        expected = boxes_people_fill(dataset_dir / "memes" / f"{t.dataset_name}.json")
        if expected is not None and len(t.boxes) < expected:
            problems.append(f"{t.slug}: {len(t.boxes)} boxes, but people fill {expected} on it")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.make_catalog", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", help="config file (default: ./config.toml if present)")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="where to write (default: the configured catalog, whose layouts are kept)",
    )
    parser.add_argument(
        "--check", action="store_true", help="compare box counts with the data, write nothing"
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"make_catalog: configuration error: {exc}", file=sys.stderr)
        return 2
    output = args.output or config.catalog_path
    try:
        if args.check:
            templates = list(load_catalog(config.catalog_path).templates)
        else:
            templates = build(config.dataset_dir, config.template_images_dir, config.catalog_path)
    except CatalogError as exc:
        print(f"make_catalog: {exc}", file=sys.stderr)
        return 2
    problems = check_box_counts(templates, config.dataset_dir)
    for line in problems:
        print(line, file=sys.stderr)
    if args.check:
        return 1 if problems else 0
    text = format_catalog(templates)
    try:
        # Parse what is about to be written, so a bad layout never replaces a good file.
        parse_catalog(tomllib.loads(text))
    except CatalogError as exc:
        print(f"make_catalog: not written: {exc}", file=sys.stderr)
        return 2
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    print(f"wrote {len(templates)} templates to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
