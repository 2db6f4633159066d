"""`memebot templates [QUERY]`: list the catalog's templates, or those matching a query."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from common.catalog import CatalogError, Template, load_catalog
from common.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    templates = sub.add_parser(
        "templates",
        help="list meme templates (all, or those matching a query)",
        description="List the catalog's templates with slug, name, number of text boxes and whether "
        "the caption model has training data for them. With QUERY, only matching templates, best first "
        "(typos are fine).",
    )
    templates.add_argument("query", metavar="QUERY", nargs="*", help='part of a name or alias, e.g. "drake"')
    templates.set_defaults(handler=run_templates)


def format_table(templates: Sequence[Template]) -> str:
    """One line per template: slug, name, box count, and whether the model has data for it."""
    slug_w = max([len("SLUG")] + [len(t.slug) for t in templates])
    name_w = max([len("NAME")] + [len(t.name) for t in templates])
    lines = [f"{'SLUG':<{slug_w}}  {'NAME':<{name_w}}  BOXES  DATA"]
    for t in templates:
        lines.append(
            f"{t.slug:<{slug_w}}  {t.name:<{name_w}}  {len(t.boxes):>5}  {'yes' if t.has_data else 'no'}"
        )
    return "\n".join(lines)


def run_templates(config: Config, args: argparse.Namespace) -> int:
    try:
        catalog = load_catalog(config.catalog_path)
    except CatalogError as exc:
        print(f"memebot templates: {exc}", file=sys.stderr)
        return 2
    query = " ".join(args.query).strip()
    found = catalog.search(query, limit=len(catalog.templates))
    if not found:
        names = ", ".join(t.slug for t in catalog.suggestions(query))
        print(f'memebot templates: nothing matches "{query}". Closest: {names}', file=sys.stderr)
        return 1
    print(format_table(found))
    what = f'matching "{query}"' if query else "in the catalog"
    print(f"\n{len(found)} template{'s' if len(found) != 1 else ''} {what}")
    return 0
