"""Captions on the templates without caption data, as served, against asking for no template.

    .venv/bin/python bench/unseen_templates.py [--n 20] [--checkpoint PATH]

For each catalog template without data, N served captions (the `[generation]` settings, seeds
0..N-1, no prefix) two ways: as before the catalog said how such a template is captioned (the
model conditioned on no template), and as the bot asks now (`Template.caption_plan`: another
template's shape, an opening phrase, the boxes put in the template's order, every box
written). Prints, for each way, in how many memes every box is filled, and how many captions
are the same as another template's for the same seed (conditioned on nothing, they all are),
then two captions per template.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from common.catalog import load_catalog
from common.config import load_config
from common.template import CaptionPlan, Template
from training.quality import load_served_generator, planned_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20, help="captions per template (default 20)")
    parser.add_argument("--checkpoint", type=Path, help="default: the configured model")
    args = parser.parse_args()
    config = load_config(None)
    catalog = load_catalog(config.catalog_path)
    generator = load_served_generator(config, args.checkpoint or config.checkpoint_path)
    unseen = [t for t in catalog.templates if not t.has_data]

    def plans(t: Template, planned: bool) -> list[CaptionPlan]:
        rng = random.Random(0)
        return [
            t.caption_plan("", rng) if planned else CaptionPlan(t.dataset_name, "") for _ in range(args.n)
        ]

    for label, planned in (("no template", False), ("as served", True)):
        filled = shared = 0
        seen: set[tuple[int, str]] = set()
        examples = []
        for t in unseen:
            asked = plans(t, planned)
            requests = [planned_request(config, t, p, seed) for seed, p in enumerate(asked)]
            results = generator.generate_batch(requests)
            captions = [p.arrange(list(r.captions[0].boxes)) for p, r in zip(asked, results, strict=True)]
            for seed, boxes in enumerate(captions):
                filled += all(b.strip() for b in boxes)
                key = (seed, " | ".join(b for b in boxes if b))
                shared += key in seen
                seen.add(key)
            examples.append(f"  {t.slug}: " + " // ".join(" | ".join(b) for b in captions[:2]))
        total = len(unseen) * args.n
        print(
            f"{label}: {len(unseen)} templates x {args.n}: every box filled {filled} of {total}; "
            f"the same caption as another template's {shared} of {total}"
        )
        print("\n".join(examples))


if __name__ == "__main__":
    main()
