"""What the model pool itself costs, measured with a generator that does no work.

    .venv/bin/python bench/pool_overhead.py [--requests 2000] [--max-batch 64] [--wait-ms 4]

Reports the added latency of one request on an idle pool (thread hop plus batch window) and
the throughput of the queue and batching machinery when it is flooded. Real decoding time
comes on top; see bench/generation.py for that.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence

from model.pool import ModelPool
from model.requests import Abandoned, Caption, GenerationRequest, GenerationResult, ResultCallback


class NoWorkGenerator:
    model_id = "no-work"

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_result: ResultCallback | None = None,
        abandoned: Abandoned | None = None,
    ) -> list[GenerationResult]:
        return [GenerationResult([Caption([r.prefix], 0.0)]) for r in requests]


async def idle_latency_ms(wait_ms: float, repeats: int) -> list[float]:
    pool = ModelPool([NoWorkGenerator], batch_wait_ms=wait_ms)
    await pool.start()
    try:
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            await pool.generate(GenerationRequest("Drake-Hotline-Bling", prefix=str(i)))
            times.append((time.perf_counter() - t0) * 1000)
        return times
    finally:
        await pool.close()


async def flood(n: int, max_batch: int, wait_ms: float) -> tuple[float, float]:
    """n requests at once -> (requests per second, mean batch size)."""
    pool = ModelPool([NoWorkGenerator], max_batch=max_batch, batch_wait_ms=wait_ms, queue_size=n)
    await pool.start()
    try:
        requests = [GenerationRequest("Drake-Hotline-Bling", prefix=str(i)) for i in range(n)]
        t0 = time.perf_counter()
        await asyncio.gather(*(pool.generate(r) for r in requests))
        elapsed = time.perf_counter() - t0
        return n / elapsed, pool.stats.mean_batch_size
    finally:
        await pool.close()


async def main(args: argparse.Namespace) -> None:
    for wait in (0.0, args.wait_ms):
        times = await idle_latency_ms(wait, repeats=200)
        print(
            f"idle pool, batch_wait_ms={wait:g}: median {statistics.median(times):.2f} ms, "
            f"p95 {statistics.quantiles(times, n=20)[-1]:.2f} ms per request"
        )
    rate, mean_batch = await flood(args.requests, args.max_batch, args.wait_ms)
    print(
        f"flood of {args.requests}, max_batch={args.max_batch}: {rate:,.0f} requests/s, mean batch {mean_batch:.1f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--wait-ms", type=float, default=4.0)
    asyncio.run(main(parser.parse_args()))
