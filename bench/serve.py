"""The model service against the in-process pool, on the same requests, in alternating rounds.

    .venv/bin/memebot serve-model --port 8123 &          # (--eager-batches for Serve's own batching)
    .venv/bin/python -m bench.serve --endpoint http://127.0.0.1:8123 [--levels 1,8,32] [--requests 48]

Generation only (no chat, no rendering): the served reply (sampling under the word rules, best
of 8, bench/generation.py's SERVED) from `--requests` closed-loop callers' worth of work at each
concurrency level, through a ModelPool built as `memebot run` builds it and through RemoteModel,
the client `[model] endpoint` uses. The two sides take turns, each round starting with the other,
so that a machine shared with other work slows both alike. Prints replies/s, each request's
latency p50/p95 and the mean batch (requests per batch: the pool's stats, the service's /stats).
Both sides decode on this machine's cores: the service's replica must not run while the pool
does, nor the reverse, and they don't (each waits for its answers).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from dataclasses import dataclass, field, replace

from bench.generation import pct, throughput
from bot.app import usable_draft, usable_lexicon
from common.config import load_config
from model.pool import ModelPool, PoolStats
from model.remote import RemoteModel


@dataclass
class Side:
    name: str
    rates: list[float] = field(default_factory=list)  # replies/s, one per round
    latencies: list[float] = field(default_factory=list)  # seconds, every request of every round
    batches: int = 0
    requests: int = 0


async def closed_loop(model: ModelPool | RemoteModel, concurrency: int, total: int, side: Side) -> None:
    side.rates.append(await throughput(model, "served", concurrency, total, side.latencies))


async def batch_stats(model: ModelPool | RemoteModel) -> PoolStats:
    return await model.server_stats() if isinstance(model, RemoteModel) else model.stats


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpoint", required=True, help="the model service's URL (memebot serve-model)")
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels (default 1,8,32)")
    parser.add_argument("--requests", type=int, default=48, help="requests per side per round (default 48)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds per level, sides alternating (default 2)"
    )
    args = parser.parse_args()
    served = load_config()
    # The same generous limits on both sides: the benchmark measures slowness, it must not turn it
    # into "busy" or timeouts on one side only.
    limits = replace(served.model, timeout_s=600.0, queue_size=10_000)
    pool = ModelPool.from_config(
        limits, served.checkpoint_path, usable_draft(served), served.kernel_dir, usable_lexicon(served)
    )
    await pool.start()
    client = RemoteModel(args.endpoint, timeout_s=limits.timeout_s, queue_size=limits.queue_size)
    await client.start()
    info = client.info
    print(
        f"model {pool.model_id} here and {client.model_id} at {args.endpoint} "
        f"(service: {info.get('device')}, max_batch {info.get('max_batch')}, wait {info.get('batch_wait_ms')} ms, "
        f"{'pool rule' if info.get('hold_while_busy') else 'eager batches'}); the served reply, best of 8"
    )
    print(f"{'concurrency':>11} {'side':<8} {'replies/s':>18} {'p50 ms':>8} {'p95 ms':>8} {'batch':>6}")
    try:
        for level in (int(x) for x in args.levels.split(",")):
            sides = {"pool": Side("pool"), "service": Side("service")}
            models: dict[str, ModelPool | RemoteModel] = {"pool": pool, "service": client}
            for r in range(args.rounds):
                for name in ("pool", "service") if r % 2 == 0 else ("service", "pool"):
                    before = await batch_stats(models[name])
                    await closed_loop(models[name], level, args.requests, sides[name])
                    # A batch is counted when it returns, a moment after its last answer.
                    await asyncio.sleep(0.5)
                    after = await batch_stats(models[name])
                    sides[name].batches += after.batches - before.batches
                    sides[name].requests += after.requests - before.requests
            for side in sides.values():
                rates = ", ".join(f"{x:.2f}" for x in side.rates)
                print(
                    f"{level:>11} {side.name:<8} {statistics.median(side.rates):>6.2f} ({rates:>9}) "
                    f"{1000 * statistics.median(side.latencies):>8.0f} {1000 * pct(side.latencies, 0.95):>8.0f} "
                    f"{side.requests / max(1, side.batches):>6.1f}",
                    flush=True,
                )
    finally:
        await client.close()
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
