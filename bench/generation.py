"""Generation speed through the pool, against the seed's CNN decoding measured in the same run.

    .venv/bin/python bench/generation.py [--checkpoint PATH] [--device cpu|cuda] [--quantize] [--no-draft] [--fp32]
        [--levels 1,8,32,128] [--max-batch N]

Prints, for greedy, sampling and beam-3 on the model: single-request latency p50/p95,
captions per second at concurrency 1, 8, 32 and 128 (or --levels), then the served default (sampling
under the word rules, best of 8: latency and replies/s at concurrency 8), and latency p50/p95 when requests arrive
on their own at 2/3 of the concurrency-32 rate; then the seed's cost for the same
methods (its CNN re-reading a 128-character window for every character) and the ratio.
Captions end when the model says so, so a 60-character caption is estimated from the
single requests: a line fitted to (length, time) by medians gives the fixed cost (prefill,
the hop through the pool) plus 60 x the cost per character, the targets' unit. On the CPU it
also times the speed-ups (fp16 weights, speculative guesses, the fused kernel) against plain
fp32 decoding, taking turns on the same requests.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.seed_cnn import SeedCNN, seed_decode  # noqa: E402
from common.config import load_config  # noqa: E402
from model.generate import load_generator  # noqa: E402
from model.pool import GeneratorLoader, ModelPool  # noqa: E402
from model.requests import DECODING_METHODS, DecodingMethod, GenerationRequest  # noqa: E402

if TYPE_CHECKING:
    from model.remote import RemoteModel

TEMPLATES = ["Change-My-Mind", "Drake-Hotline-Bling", "Two-Buttons", "Ancient-Aliens", "Distracted-Boyfriend"]
# Every decoding method (model/requests.py), timed with these settings beyond the defaults.
TIMED_WITH: dict[str, dict[str, Any]] = {
    "sample": {"temperature": 0.8, "top_p": 0.95},
    "beam": {"beam_width": 3},
}


def _timed(method: DecodingMethod) -> tuple[str, dict[str, Any]]:
    """A method's label in the tables (beam search's names its width: "beam-3") and its settings."""
    settings = {"method": method.name, **TIMED_WITH.get(method.name, {})}
    width = settings.get("beam_width")
    return (f"{method.name}-{width}" if width else method.name), settings


METHODS = dict(_timed(m) for m in DECODING_METHODS)
# What a chat is served by default ([generation]): sampling under the word rules, best of 8.
SERVED = {
    "method": "sample",
    "temperature": 0.8,
    "top_p": 0.95,
    "lexicon": True,
    "block_repeats": True,
    "best_of": 8,
}


def sixty_chars(times: list[float], lengths: list[int]) -> float:
    """Seconds for a 60-character caption, from a line through (length, time) fitted by medians
    (Theil-Sen): one request slowed down by the machine must not tilt it."""
    pairs = list(zip(lengths, times, strict=True))
    slopes = [
        (tb - ta) / (lb - la) for i, (la, ta) in enumerate(pairs) for lb, tb in pairs[i + 1 :] if lb != la
    ]
    if not slopes:
        return 60 * statistics.median(t / n for n, t in pairs)
    slope = statistics.median(slopes)
    intercept = statistics.median(t - slope * n for n, t in pairs)
    return intercept + 60 * slope


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def request(method: str, i: int) -> GenerationRequest:
    settings = SERVED if method == "served" else METHODS[method]
    return GenerationRequest(
        template=TEMPLATES[i % len(TEMPLATES)], max_length=120, seed=i, n_boxes=2, **settings
    )


async def single_latency(pool: ModelPool, method: str, reps: int) -> tuple[list[float], list[int]]:
    times, lengths = [], []
    for i in range(reps):
        t = time.perf_counter()
        result = await pool.generate(request(method, i))
        times.append(time.perf_counter() - t)
        lengths.append(max(1, len(" ".join(result.captions[0].boxes))))
    return times, lengths


async def throughput(
    pool: ModelPool | RemoteModel,
    method: str,
    concurrency: int,
    total: int,
    latencies: list[float] | None = None,
) -> float:
    """Captions per second with `concurrency` clients, each sending its next request as soon as
    it has its answer; each request's seconds appended to `latencies` when given."""
    queue = list(range(total))

    async def client() -> None:
        while queue:
            started = time.perf_counter()
            await pool.generate(request(method, queue.pop()))
            if latencies is not None:
                latencies.append(time.perf_counter() - started)

    t = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return total / (time.perf_counter() - t)


async def open_loop_latency(pool: ModelPool, method: str, rate: float, total: int) -> list[float]:
    """Seconds per request when requests arrive on their own, as chat users send them: Poisson
    arrivals at `rate` per second (seeded, so every run offers the same pattern)."""
    gaps = random.Random(0)
    latencies: list[float] = []

    async def one(i: int) -> None:
        t = time.perf_counter()
        await pool.generate(request(method, i))
        latencies.append(time.perf_counter() - t)

    tasks = []
    for i in range(total):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(gaps.expovariate(rate))
    await asyncio.gather(*tasks)
    return latencies


def variant_costs(
    checkpoint: Path, draft: Path | None, kernel_dir: Path, reps: int
) -> dict[str, dict[str, float]]:
    """Seconds per character of one request at a time, for the decoding variants of this release,
    taking turns on the same requests so that machine noise hits them alike."""
    variants = {
        "plain fp32": {"draft": None, "half_weights": False},
        "fp16 weights": {"draft": None, "half_weights": True},
        "fp16 + guesses": {"draft": draft, "half_weights": True},
        "+ fused kernel": {"draft": draft, "half_weights": True, "kernel_dir": kernel_dir},
    }
    # Built and run on one worker thread, as the pool does: a generator built on the main
    # thread and used from another measured up to 2x slower here (OpenMP thread state).
    with ThreadPoolExecutor(max_workers=1) as thread:
        gens = {
            name: thread.submit(load_generator, checkpoint, "cpu", torch.get_num_threads(), **kw).result()
            for name, kw in variants.items()
        }
        out: dict[str, dict[str, float]] = {}
        for method in METHODS:
            times: dict[str, list[float]] = {name: [] for name in gens}
            lengths: dict[str, list[int]] = {name: [] for name in gens}
            for i in range(reps):
                for name, gen in gens.items():
                    req = request(method, i)
                    t = time.perf_counter()
                    result = thread.submit(gen.generate_batch, [req]).result()[0]
                    times[name].append(time.perf_counter() - t)
                    lengths[name].append(max(1, len(" ".join(result.captions[0].boxes))))
            out[method] = {name: sixty_chars(times[name], lengths[name]) / 60 for name in gens}
    return out


def seed_cost(method: str, reps: int) -> float:
    """Seconds per character of the seed's decoding for this method (its sampling costs what
    its greedy decoding does)."""
    model = SeedCNN().eval()
    width = METHODS[method].get("beam_width", 1)
    seed_decode(model, 1, 4, width)  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        seed_decode(model, 1, 20, width)
        times.append((time.perf_counter() - t) / 20)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quantize", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--no-draft", action="store_true", help="plain steps, no speculative decoding")
    parser.add_argument("--fp32", action="store_true", help="fp32 weights instead of [model] half_weights")
    parser.add_argument("--no-fused", action="store_true", help="PyTorch ops instead of the fused kernel")
    parser.add_argument("--batch-wait-ms", type=float, help="the pool's batch window (default: [model])")
    parser.add_argument("--reps", type=int, default=30, help="single-request repetitions per method")
    parser.add_argument("--seed-reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    parser.add_argument(
        "--levels", help="comma-separated concurrency levels (default 1,8,32,128; quick: 1,8,32)"
    )
    parser.add_argument("--max-batch", type=int, help="the pool's largest batch (default: [model])")
    args = parser.parse_args()
    config = load_config()
    checkpoint = args.checkpoint or config.checkpoint_path
    torch.set_num_threads(args.threads)
    draft = None if args.no_draft else config.draft_path
    loader = GeneratorLoader(
        checkpoint,
        args.device,
        args.threads,
        quantize=args.quantize,
        compile=args.compile,
        draft=draft,
        half_weights=config.model.half_weights and not args.fp32,
        kernel_dir=None if args.no_fused else config.kernel_dir,
        lexicon=config.lexicon_path,
    )
    # A long timeout: the benchmark measures slowness, it must not turn it into errors.
    batch_wait_ms = config.model.batch_wait_ms if args.batch_wait_ms is None else args.batch_wait_ms
    max_batch = args.max_batch or config.model.max_batch
    pool = ModelPool([loader], max_batch=max_batch, batch_wait_ms=batch_wait_ms, timeout_s=600)
    await pool.start()
    device = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    )
    print(
        f"model {pool.model_id} ({checkpoint.name}) on {device}; quantize={args.quantize} "
        f"compile={args.compile} speculative={draft is not None} "
        f"half_weights={config.model.half_weights and not args.fp32} "
        f"fused_kernel={loader.kernel_dir is not None} batch_wait_ms={batch_wait_ms:g} max_batch={max_batch}"
    )
    levels = (1, 8, 32) if args.quick else (1, 8, 32, 128)
    if args.levels:
        levels = tuple(int(c) for c in args.levels.split(","))
    ours_per_char = {}
    at_32: dict[str, float] = {}
    print(
        f"\n{'method':<8} {'p50 ms':>8} {'p95 ms':>8} {'chars':>6} {'60-char ms':>11} "
        + " ".join(f"{'c=' + str(c):>8}" for c in levels)
        + "  (captions/s)"
    )
    for method in METHODS:
        reps = max(5, args.reps // (3 if args.quick else 1))
        times, lengths = await single_latency(pool, method, reps)
        per_char = sixty_chars(times, lengths) / 60
        ours_per_char[method] = per_char
        rates = []
        for c in levels:
            total = max(2 * c, 32 if args.quick else 64)
            rates.append(await throughput(pool, method, c, total))
        at_32[method] = rates[levels.index(32)] if 32 in levels else rates[-1]
        print(
            f"{method:<8} {1000 * statistics.median(times):>8.1f} {1000 * pct(times, 0.95):>8.1f} "
            f"{statistics.mean(lengths):>6.0f} {60000 * per_char:>11.1f} "
            + " ".join(f"{r:>8.1f}" for r in rates)
        )
    # The default chat reply: 8 sampled candidates under the word rules, the best one answered.
    times, lengths = await single_latency(pool, "served", max(5, args.reps // 3))
    served_rate = await throughput(pool, "served", 8, 32)
    print(
        f"{'served':<8} {1000 * statistics.median(times):>8.1f} {1000 * pct(times, 0.95):>8.1f} "
        f"{statistics.mean(lengths):>6.0f} {60000 * sixty_chars(times, lengths) / 60:>11.1f} "
        f"  (sampling, word rules, best of 8; {served_rate:.1f} replies/s at concurrency 8)"
    )
    print(
        "\nlatency with requests arriving on their own (Poisson) at 2/3 of the c=32 rate;"
        " each caller is answered when its own caption is done"
    )
    print(f"{'method':<8} {'requests/s':>11} {'p50 ms':>8} {'p95 ms':>8}")
    for method, rate in at_32.items():
        latencies = await open_loop_latency(pool, method, 2 / 3 * rate, 100 if args.quick else 300)
        print(
            f"{method:<8} {2 / 3 * rate:>11.0f} {1000 * statistics.median(latencies):>8.1f} "
            f"{1000 * pct(latencies, 0.95):>8.1f}"
        )
    stats = pool.stats
    await pool.close()
    print(
        f"\npool: {stats.batches} batches, mean batch {stats.mean_batch_size:.1f} requests, largest {stats.max_batch_size}"
    )
    if args.device == "cpu" and not (args.quantize or args.compile):
        print("\nthis release's speed-ups, one request at a time, taking turns (60-char ms):")
        costs = variant_costs(
            checkpoint, config.draft_path, config.cache_dir / "kernels", 8 if args.quick else 20
        )
        names = list(next(iter(costs.values())))
        print(f"{'method':<8} " + " ".join(f"{n:>15}" for n in names) + f" {'speed-up':>9}")
        for method, cost in costs.items():
            print(
                f"{method:<8} "
                + " ".join(f"{60000 * cost[n]:>15.1f}" for n in names)
                + f" {cost[names[0]] / cost[names[-1]]:>8.1f}x"
            )
    print("\nseed CNN baseline (same machine, same process, random weights):")
    print(f"{'method':<8} {'60-char ms':>11} {'ours ms':>9} {'speed-up':>9}")
    for method in METHODS:
        seed = seed_cost(method, args.seed_reps)
        print(
            f"{method:<8} {60000 * seed:>11.1f} {60000 * ours_per_char[method]:>9.1f} {seed / ours_per_char[method]:>8.1f}x"
        )


if __name__ == "__main__":
    asyncio.run(main())
