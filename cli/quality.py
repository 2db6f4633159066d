"""`memebot quality`: captions as served, measured (training/quality.py does the work)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from common.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    quality = sub.add_parser(
        "quality", help="captions as served, measured: non-words, repeats, copies, a discriminator"
    )
    quality.add_argument("--checkpoint", type=Path, help="default: the configured model")
    quality.add_argument("--baseline", type=Path, help="also measure this checkpoint, side by side")
    quality.add_argument("--n", type=int, default=1000, help="validation memes to caption (default 1000)")
    quality.add_argument("--json", action="store_true", help="print the report as JSON")
    quality.add_argument(
        "--pairs",
        type=Path,
        metavar="FILE",
        help="also write N blind pairs here, the answers to FILE.key.json",
    )
    quality.add_argument(
        "--judged",
        type=Path,
        nargs="+",
        metavar="ANSWERS",
        help='score readers\' answers to --pairs FILE (JSON list of {"pair", "person", "A", "B"}), '
        "each reader's and, for several, all together; generates nothing",
    )
    quality.add_argument(
        "--any-picture",
        action="store_true",
        help="caption as for a user's own picture: no template to condition on (top and bottom lines)",
    )
    quality.add_argument("--data", type=Path, help="ImgFlip575K-layout folder (default: from config)")
    quality.add_argument("--seed", type=int, default=0, help="picks the memes and fixes sampling (default 0)")
    quality.set_defaults(handler=quality_command)


def quality_command(config: Config, args: argparse.Namespace) -> int:
    from common.catalog import load_catalog
    from model.checkpoint import CheckpointError
    from model.draft import DraftTableError
    from training.dataset import load_dataset
    from training.quality import (
        QualityReport,
        generate_all,
        key_path,
        load_served_generator,
        measure,
        pick_samples,
        pooled_lines,
        score_judgments,
        served_requests,
        training_reference,
        write_pairs,
    )

    def note(text: str) -> None:
        print(f"memebot quality: {text}", file=sys.stderr, flush=True)

    if args.judged:
        if not args.pairs:
            note("--judged needs --pairs FILE: the pairs the reader judged (its key is read beside it)")
            return 2
        try:
            key = json.loads(key_path(args.pairs).read_text())
        except (OSError, ValueError) as exc:
            note(f"cannot read the key of {args.pairs}: {exc}")
            return 2
        readers = []
        for answers in args.judged:
            try:
                readers.append(score_judgments(key, json.loads(answers.read_text())))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                note(f"cannot score {answers}: {exc}")
                return 2
        if len(readers) == 1:
            print("\n".join(readers[0].lines()))
            return 0
        for answers, judged in zip(args.judged, readers, strict=True):
            print("\n".join(f"{answers.name}: {line}" for line in judged.lines()))
        print("\n".join(pooled_lines(readers)))
        return 0
    if args.n < 2:
        note("--n must be at least 2")
        return 2
    try:
        dataset = load_dataset(args.data or config.dataset_dir, config.cache_dir)
    except FileNotFoundError as exc:
        note(str(exc))
        return 2
    samples = pick_samples(dataset, args.n, args.seed)
    if len(samples) < args.n:
        note(f"the validation split has only {len(samples)} memes: using them all")
    if len(samples) < 2:
        note("the validation split needs at least two memes")
        return 2
    reference = training_reference(dataset)
    catalog = load_catalog(config.catalog_path)
    requests = served_requests(config, catalog, samples, args.seed, any_picture=args.any_picture)

    def run(checkpoint: Path) -> tuple[QualityReport, list[list[str]]]:
        generator = load_served_generator(config, checkpoint)
        note(f"{generator.model_id}: {len(requests)} captions ({config.generation.method})")
        started = time.perf_counter()
        generated = generate_all(generator, requests, config.model.max_batch)
        seconds = time.perf_counter() - started
        note(f"generated in {seconds:.1f} s")
        report = measure(
            generated,
            samples,
            reference,
            model_id=generator.model_id,
            checkpoint=str(checkpoint),
            seconds=seconds,
        )
        return report, generated

    try:
        report, generated = run(args.checkpoint or config.checkpoint_path)
        baseline = run(args.baseline)[0] if args.baseline else None
    except CheckpointError as exc:
        note(f"cannot load the model: {exc}")
        return 1
    except DraftTableError as exc:
        note(str(exc))
        return 1
    if args.pairs:
        names = {t.dataset_name: t.name for t in catalog.templates}
        kp = write_pairs(args.pairs, samples, generated, args.seed, names, report.model_id)
        note(f"{len(samples)} blind pairs: {args.pairs} (answers: {kp})")
    if args.json:
        out: dict[str, Any] = {
            "n": len(samples),
            "seed": args.seed,
            "data_fingerprint": dataset.fingerprint,
            "generation": asdict(config.generation),
            "lexicon_words": len(reference.lexicon),
            **report.to_dict(),
        }
        if baseline is not None:
            out["baseline"] = baseline.to_dict()
        print(json.dumps(out, indent=2))
        return 0
    for line in report.lines(baseline):
        print(line)
    return 0
