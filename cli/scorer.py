"""`memebot scorer`: build the best-of-N reranker (model/scorer.py; training/scorer.py fits it).

It captions --requests training-split memes the way the bot serves them (every candidate of best
of N is kept), then fits the scorer on those candidates against --people training-split captions
written by people, and writes it next to the model (`[model] scorer`). Validation memes are never
used, so `memebot quality` and the blind pairs stay held out. About 10 minutes on 2 CPU cores
with the defaults, nearly all of it generating.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scorer", help="build the best-of-N reranker: what reads as a person's caption")
    p.add_argument("--data", type=Path, help="ImgFlip575K-layout folder (default: from config)")
    p.add_argument("--output", "-o", type=Path, help="default: the configured [model] scorer path")
    p.add_argument("--requests", type=int, default=3000, help="training memes to caption (default 3000)")
    p.add_argument("--people", type=int, default=30000, help="people's training captions (default 30000)")
    p.add_argument(
        "--candidates",
        type=Path,
        metavar="FILE",
        help="JSON lines of candidates: read them from FILE if it exists, else generate and keep them there",
    )
    p.add_argument("--seed", type=int, default=11, help="picks the memes and fixes sampling (default 11)")
    p.set_defaults(handler=scorer_command)


def scorer_command(config: Config, args: argparse.Namespace) -> int:
    from common.catalog import load_catalog
    from model.checkpoint import CheckpointError
    from training.dataset import load_dataset
    from training.quality import load_served_generator, served_requests
    from training.scorer import (
        fit_scorer,
        generate_candidates,
        people_captions,
        pick_training_samples,
        read_candidates,
        write_candidates,
    )

    def note(text: str) -> None:
        print(f"memebot scorer: {text}", file=sys.stderr, flush=True)

    if args.requests < 2 or args.people < 2:
        note("--requests and --people must be at least 2")
        return 2
    try:
        dataset = load_dataset(args.data or config.dataset_dir, config.cache_dir)
    except FileNotFoundError as exc:
        note(str(exc))
        return 2
    if args.candidates is not None and args.candidates.exists():
        candidates = read_candidates(args.candidates)
        note(f"{len(candidates)} candidates read from {args.candidates}")
    else:
        samples = pick_training_samples(dataset, args.requests, args.seed)
        requests = served_requests(config, load_catalog(config.catalog_path), samples, args.seed)
        try:
            generator = load_served_generator(config, config.checkpoint_path)
        except CheckpointError as exc:
            note(f"cannot load the model: {exc}")
            return 1
        started = time.perf_counter()
        note(
            f"{generator.model_id}: captioning {len(requests)} training memes, best of {config.generation.best_of}"
        )
        results = generate_candidates(generator, requests, config.model.max_batch)
        note(f"generated in {time.perf_counter() - started:.0f} s")
        path = args.candidates or config.cache_dir / "scorer-candidates.jsonl"
        write_candidates(path, samples, results)
        candidates = read_candidates(path)
    generated = [(c.template, c.boxes) for c in candidates]
    people = people_captions(dataset, args.people, args.seed)
    scorer, report = fit_scorer(people, generated, progress=note)
    output = args.output or config.scorer_path
    scorer.save(output)
    print(
        f"{report.people} people's captions, {report.generated} generated: held-out accuracy "
        f"{report.held_out_accuracy:.1%}, a person's caption outscores a generated one "
        f"{report.pick_person_rate:.1%} of the time: {output} ({output.stat().st_size / 1024:.0f} KiB)"
    )
    return 0
