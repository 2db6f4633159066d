"""`memebot pick TEXT [--n 5]`: the templates the model would caption these words on, best first."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pick",
        help="the templates the model thinks a text was written for",
        description="Ranks the catalog's templates by how likely TEXT is as the start of their "
        "captions under the model (one pass, a row per template) and prints the best N, one per "
        "line: slug, log-likelihood in nats, and the probability among all templates if each "
        "was as likely beforehand. A chat's /meme with no template name picks among the best 3.",
    )
    p.add_argument("text", nargs="+", help='the caption\'s words; "|" moves to the next box')
    p.add_argument("--n", type=int, default=5, help="how many templates to print (default 5)")
    p.add_argument("--checkpoint", type=Path, help="default: the configured model")
    p.set_defaults(handler=pick_command)


def pick_command(config: Config, args: argparse.Namespace) -> int:
    import torch

    from common.catalog import CatalogError, load_catalog
    from model.checkpoint import CheckpointError, load_checkpoint
    from model.pick import score_templates, text_ids
    from model.vocab import Vocab

    text = " ".join(args.text)
    if args.n < 1:
        print("memebot pick: --n must be at least 1", file=sys.stderr)
        return 2
    if not text_ids(Vocab(), text):
        print("memebot pick: there are no words to pick a template from", file=sys.stderr)
        return 2
    try:
        catalog = load_catalog(config.catalog_path)
        checkpoint = load_checkpoint(args.checkpoint or config.checkpoint_path)
    except CatalogError as exc:
        print(f"memebot pick: {exc}", file=sys.stderr)
        return 2
    except CheckpointError as exc:
        print(f"memebot pick: no model yet ({exc})", file=sys.stderr)
        return 1
    # The catalog's templates the model knows: one it has no id for would be scored by the
    # shared "unknown" id, alike for every such template.
    slugs = {t.dataset_name: t.slug for t in catalog.templates if checkpoint.template_id(t.dataset_name)}
    if not slugs:
        print("memebot pick: the model knows none of the catalog's templates", file=sys.stderr)
        return 1
    phrased = catalog.by_phrase(text)
    if phrased is not None:
        print(
            f"memebot pick: the text is in the set phrase of {phrased.slug}, which a chat's /meme takes "
            "(the model has no captions of it to score)",
            file=sys.stderr,
        )
    torch.set_num_threads(config.model.threads)
    scores = score_templates(checkpoint.build().eval(), checkpoint, text, list(slugs))
    best = scores.best(args.n)
    width = max(len(slugs[name]) for name, _ in best)
    for (name, score), p in zip(best, scores.probabilities(), strict=False):
        print(f"{slugs[name]:<{width}}  {score:9.2f}  {p:6.1%}")
    return 0
