"""Renderer benchmark: time to render one meme, and memes per second with every core busy.

    .venv/bin/python bench/render.py [--repeats 15] [--seconds 5] [--processes 2]

Prints figures only (no pass/fail): the machine is shared, so read medians, not maxima.
Target on the 2-core dev machine: median <= 25 ms for a ~500-px template with a 60-char caption.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

from bot.render import Renderer
from common.catalog import Template, load_catalog
from common.config import Config, load_config

CAPTION_LENGTHS = (20, 60, 150)
SAMPLE_TEMPLATES = 12
WORDS = (
    "when the build finally passes on friday evening and you remember the deploy script still "
    "points at the staging database from last spring so you open a ticket and go home early"
).split()


# About 60 characters in each writing system the fallback fonts serve (bot/fonts.py): each is
# drawn run by run from another font, emoji as colour bitmaps scaled to the line.
SCRIPTS = {
    "latin": "when the build passes on friday and you remember the deploy",
    "emoji": "🔥🔥 when the build passes 😂😂 | me on friday 🚀👍🏽 🎉🎉🎉",
    "cyrillic": "когда сборка прошла в пятницу | и ты вспомнил про деплой",
    "cjk": "金曜日にビルドが通った時 | デプロイのことを思い出した 构建终于通过了",
}


def caption(n_chars: int) -> str:
    """About n_chars of caption, cut at a word boundary."""
    words: list[str] = []
    for word in WORDS * 4:
        if len(" ".join([*words, word])) > n_chars:
            break
        words.append(word)
    return " ".join(words)


def texts_for(template: Template, n_chars: int) -> list[str]:
    """n_chars of caption spread over the template's boxes, as a model would."""
    text = caption(n_chars).split()
    n = len(template.boxes)
    per_box = max(1, len(text) // n)
    return [" ".join(text[i * per_box : (i + 1) * per_box if i < n - 1 else None]) for i in range(n)]


def make_renderer(config: Config) -> Renderer:
    return Renderer(
        config.template_images_dir,
        max_side=config.render.max_side,
        fallback_fonts=[config.resolve(p) for p in config.render.fallback_fonts],
        uppercase=config.render.uppercase,
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_renders(renderer: Renderer, template: Template, texts: list[str], repeats: int) -> list[float]:
    renderer.render(template, texts)  # warm: decode the template, load the font sizes
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        renderer.render(template, texts)
        times.append(time.perf_counter() - start)
    return times


def sample(templates: tuple[Template, ...], n: int) -> list[Template]:
    """n templates spread over the catalog, from small images to large."""
    by_size = sorted(templates, key=lambda t: t.width * t.height)
    step = max(1, len(by_size) // n)
    return by_size[::step][:n]


def headline_template(templates: tuple[Template, ...]) -> Template:
    """The template whose long side is closest to 500 px (one or two boxes, like most memes)."""
    simple = [t for t in templates if len(t.boxes) <= 2] or list(templates)
    return min(simple, key=lambda t: abs(max(t.width, t.height) - 500))


def _worker(args: tuple[str | None, list[str], float, multiprocessing.Barrier]) -> int:
    config_path, slugs, seconds, barrier = args
    config = load_config(config_path)
    catalog = load_catalog(config.catalog_path)
    renderer = make_renderer(config)
    jobs = [(catalog.get(s), texts_for(catalog.get(s), 60)) for s in slugs]
    for template, texts in jobs:
        renderer.render(template, texts)
    barrier.wait()
    done, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        template, texts = jobs[done % len(jobs)]
        renderer.render(template, texts)
        done += 1
    return done


def throughput(config_path: str | None, slugs: list[str], processes: int, seconds: float) -> float:
    """Memes per second from `processes` processes rendering flat out."""
    with multiprocessing.Manager() as manager:
        barrier = manager.Barrier(processes)
        with multiprocessing.Pool(processes) as pool:
            counts = pool.map(_worker, [(config_path, slugs, seconds, barrier)] * processes)
    return sum(counts) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="config file (default: ./config.toml or built-in defaults)")
    parser.add_argument("--repeats", type=int, default=15, help="timed renders per template and length")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput run")
    parser.add_argument("--processes", type=int, default=2, help="processes for the busy-cores run")
    args = parser.parse_args()

    config = load_config(args.config)
    catalog = load_catalog(config.catalog_path)
    renderer = make_renderer(config)
    print(
        f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}, max_side: {config.render.max_side}"
    )

    headline = headline_template(catalog.templates)
    texts = texts_for(headline, 60)
    start = time.perf_counter()
    meme = make_renderer(config).render(headline, texts)
    cold = time.perf_counter() - start
    times = time_renders(renderer, headline, texts, args.repeats * 4)
    print(
        f"\nheadline: {headline.slug} ({headline.width}x{headline.height} -> {meme.width}x{meme.height} "
        f"{meme.format}, {len(meme.data) // 1024} KB), 60-char caption\n"
        f"  median {statistics.median(times) * 1e3:.1f} ms, p95 {percentile(times, 0.95) * 1e3:.1f} ms, "
        f"first render in a fresh renderer {cold * 1e3:.0f} ms"
    )

    print("\nheadline template, 60 characters of each script:")
    for script, text in SCRIPTS.items():
        boxes = [b.strip() for b in text.split("|")][: len(headline.boxes)]
        times = time_renders(renderer, headline, boxes, args.repeats * 2)
        print(
            f"  {script:>8}  median {statistics.median(times) * 1e3:>5.1f} ms, "
            f"p95 {percentile(times, 0.95) * 1e3:>5.1f} ms"
        )

    templates = sample(catalog.templates, SAMPLE_TEMPLATES)
    print(f"\n{len(templates)} templates, {args.repeats} renders each:")
    print(f"  {'caption':>8}  {'median':>9}  {'p95':>9}")
    for n_chars in CAPTION_LENGTHS:
        times = [
            t
            for template in templates
            for t in time_renders(renderer, template, texts_for(template, n_chars), args.repeats)
        ]
        print(
            f"  {n_chars:>5} ch  {statistics.median(times) * 1e3:>6.1f} ms  {percentile(times, 0.95) * 1e3:>6.1f} ms"
        )

    slugs = [t.slug for t in templates]
    single = throughput(args.config, slugs, 1, args.seconds)
    busy = throughput(args.config, slugs, args.processes, args.seconds)
    print(
        f"\nthroughput (60-char captions over the sample): {single:.0f} memes/s in 1 process, "
        f"{busy:.0f} memes/s in {args.processes} processes"
    )


if __name__ == "__main__":
    main()
