"""The model pool: batching, back-pressure, failures and shutdown, with our own BatchGenerator
test double; then the real generator end to end, built from config."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import pytest
import torch

from common.config import ModelConfig
from model.pool import (
    GenerationFailed,
    InvalidRequest,
    ModelPool,
    PoolBusy,
    PoolClosed,
    PoolError,
    PoolTimeout,
    resolve_devices,
)
from model.requests import Abandoned, Caption, GenerationRequest, GenerationResult, ResultCallback
from tests.conftest import SYNTHETIC_CAPTIONS

pytestmark = pytest.mark.timeout(30)  # a hung future fails the test instead of the run


def answer(request: GenerationRequest) -> GenerationResult:
    """The double's captions: a function of the request, and of its seed when it has one."""
    rng = random.Random(request.seed) if request.seed is not None else random.Random()
    return GenerationResult(
        [
            Caption([request.template, f"{request.prefix} #{rng.randrange(10**9)}"], -1.0)
            for _ in range(request.n)
        ]
    )


@dataclass
class FakeGenerator:
    """A deterministic BatchGenerator that records what it was asked, in which thread.

    `gate`, while unset, holds every batch inside generate_batch: the worker is then busy,
    which lets a test fill the queue or close the pool at a known moment. time.sleep and
    Event.wait release the GIL like real decoding does. Requests whose prefix is in `early`
    are answered through on_result before the gate, as short captions are in a real batch;
    after the gate it notes which requests it was told were abandoned."""

    model_id: str = "fake-1"
    delay_s: float = 0.0
    gate: threading.Event | None = None
    fail_on_prefix: str | None = None
    early: tuple[str, ...] = ()
    batches: list[list[GenerationRequest]] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    abandoned: list[str] = field(default_factory=list)  # prefixes seen given up, after the gate

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_result: ResultCallback | None = None,
        abandoned: Abandoned | None = None,
    ) -> list[GenerationResult]:
        self.batches.append(list(requests))
        self.threads.add(threading.current_thread().name)
        for i, r in enumerate(requests):
            if r.prefix in self.early and on_result is not None:
                on_result(i, answer(r))
        if self.gate is not None:
            assert self.gate.wait(10), "test forgot to open the gate"
        if abandoned is not None:
            self.abandoned.extend(r.prefix for i, r in enumerate(requests) if abandoned(i))
        time.sleep(self.delay_s)
        if any(r.prefix == self.fail_on_prefix for r in requests):
            raise RuntimeError("the GPU caught fire")
        return [answer(r) for r in requests]

    def seen_prefixes(self) -> list[str]:
        return [r.prefix for batch in self.batches for r in batch]


@contextlib.asynccontextmanager
async def running(
    *generators: FakeGenerator, warmup: bool = False, **options: float
) -> AsyncIterator[ModelPool]:
    pool = ModelPool([lambda g=g: g for g in generators], **options)  # type: ignore[misc]
    await pool.start(warmup=warmup)
    try:
        yield pool
    finally:
        for g in generators:
            if g.gate is not None:
                g.gate.set()
        await pool.close()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (without blocking the loop) for something a worker thread does."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


def req(prefix: str, **fields: object) -> GenerationRequest:
    return GenerationRequest(template="Drake-Hotline-Bling", prefix=prefix, **fields)  # type: ignore[arg-type]


# ---- batching -----------------------------------------------------------------------------


async def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_answer():
    gen = FakeGenerator(delay_s=0.01)
    async with running(gen, max_batch=8, batch_wait_ms=20) as pool:
        requests = [
            GenerationRequest(
                template=f"T{i % 3}", prefix=f"p{i}", method=("sample", "greedy", "beam")[i % 3], n=1
            )
            for i in range(30)
        ]
        results = await asyncio.gather(*(pool.generate(r) for r in requests))
        stats = pool.stats

    for r, result in zip(requests, results, strict=True):
        assert [c.boxes[0] for c in result.captions] == [r.template]
        assert result.captions[0].boxes[1].startswith(f"{r.prefix} #")
    assert max(len(b) for b in gen.batches) > 1, "requests arriving together must be decoded together"
    assert any(len({r.method for r in b}) > 1 for b in gen.batches), "a batch may mix methods"
    assert sorted(gen.seen_prefixes()) == sorted(r.prefix for r in requests)  # each decoded exactly once
    assert stats.batches == len(gen.batches) and stats.requests == 30
    assert stats.max_batch_size == max(len(b) for b in gen.batches) <= 8
    assert gen.threads and "MainThread" not in gen.threads


async def test_n_and_beam_width_count_toward_max_batch():
    gen = FakeGenerator(delay_s=0.005)
    async with running(gen, max_batch=4, batch_wait_ms=20) as pool:
        results = await asyncio.gather(
            pool.generate(req("a", n=3)),
            pool.generate(req("b", n=3)),
            pool.generate(req("c", method="beam", beam_width=3)),
            pool.generate(req("d", n=1)),
            pool.generate(req("big", n=9)),  # larger than a batch: runs alone, not never
        )
        stats = pool.stats
    assert [len(r.captions) for r in results] == [3, 3, 1, 1, 9]

    def rows(r: GenerationRequest) -> int:
        return r.beam_width if r.method == "beam" else r.n

    assert [[r.prefix for r in b] for b in gen.batches] == [["a"], ["b"], ["c", "d"], ["big"]]
    assert all(sum(map(rows, b)) <= 4 for b in gen.batches[:3])
    assert stats.batch_rows == {3: 2, 4: 1, 9: 1}


async def test_seeded_request_gives_the_same_answer_alone_and_inside_a_batch():
    gen = FakeGenerator()
    target = req("seeded", seed=1234, n=2)
    async with running(gen, max_batch=16, batch_wait_ms=20) as pool:
        alone = await pool.generate(target)
        crowd = [req(f"other{i}", seed=i) for i in range(6)]
        together = await asyncio.gather(*(pool.generate(r) for r in [*crowd[:3], target, *crowd[3:]]))
    assert len(gen.batches[-1]) == 7
    assert together[3] == alone


async def test_two_workers_share_the_load_each_in_its_own_thread():
    gens = [FakeGenerator(delay_s=0.02), FakeGenerator(delay_s=0.02)]
    async with running(*gens, max_batch=4, batch_wait_ms=2) as pool:
        results = await asyncio.gather(*(pool.generate(req(f"p{i}")) for i in range(24)))
    assert len(results) == 24
    assert all(g.batches for g in gens), "an idle worker must pick up queued work"
    assert gens[0].threads.isdisjoint(gens[1].threads)


async def test_warmup_sends_one_tiny_request_through_every_worker_thread():
    gens = [FakeGenerator(model_id="m-7"), FakeGenerator(model_id="m-7")]
    factory_threads: list[str] = []

    def factory(g: FakeGenerator) -> Callable[[], FakeGenerator]:
        def build() -> FakeGenerator:
            factory_threads.append(threading.current_thread().name)
            return g

        return build

    pool = ModelPool([factory(g) for g in gens])
    with pytest.raises(RuntimeError, match="start"):
        _ = pool.model_id
    await pool.start()
    try:
        assert pool.model_id == "m-7"
        assert [len(g.batches) for g in gens] == [1, 1]
        assert all(len(g.batches[0]) == 1 and g.batches[0][0].max_length <= 8 for g in gens)
        # The model is loaded on the thread that will run it, never on the event loop.
        assert sorted(factory_threads) == sorted(t for g in gens for t in g.threads)
        assert pool.stats.batches == 0  # warm-up is not traffic
    finally:
        await pool.close()


async def test_failed_warmup_fails_start():
    gen = FakeGenerator(fail_on_prefix="")  # the warm-up request has an empty prefix
    pool = ModelPool([lambda: gen])
    with pytest.raises(RuntimeError, match="caught fire"):
        await pool.start()


# ---- back-pressure, timeouts, cancellation ----------------------------------------------------


async def test_full_queue_raises_busy_at_once_and_queued_requests_still_finish():
    gen = FakeGenerator(gate=threading.Event())
    async with running(gen, queue_size=2, batch_wait_ms=0, max_batch=1) as pool:
        first = asyncio.create_task(pool.generate(req("running")))
        await until(lambda: len(gen.batches) == 1)
        queued = [asyncio.create_task(pool.generate(req(f"queued{i}"))) for i in range(2)]
        await asyncio.sleep(0.01)

        t0 = time.perf_counter()
        with pytest.raises(PoolBusy) as busy:
            await pool.generate(req("one too many"))
        assert time.perf_counter() - t0 < 0.05
        assert "busy" in busy.value.user_message

        gen.gate.set()  # type: ignore[union-attr]
        results = await asyncio.gather(first, *queued)
        assert [r.captions[0].boxes[1].split(" #")[0] for r in results] == ["running", "queued0", "queued1"]
        assert (await pool.generate(req("after"))).captions
        assert pool.stats.rejected == 1
    assert "one too many" not in gen.seen_prefixes()


async def test_a_request_that_would_time_out_in_the_queue_is_told_busy_at_once():
    """With more decoding queued than the timeout allows (by the rate the pool measured), a new
    request is refused at once instead of waiting out its timeout; one that fits still waits
    and is served, and a request into an empty queue is always let in."""
    gen = FakeGenerator(delay_s=0.05)  # one row per batch: about 20 batches/s
    async with running(gen, timeout_s=1.0, batch_wait_ms=0, max_batch=1) as pool:
        await pool.generate(req("measure"))  # the time a batch takes is known after one
        await pool.generate(req("again"))
        served = [asyncio.create_task(pool.generate(req(f"fits{i}"))) for i in range(4)]  # ~0.25 s queued
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        late = []
        for i in range(40):  # ~2 s more: most of these could not be decoded within 1 s
            late.append(asyncio.create_task(pool.generate(req(f"late{i}"))))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        results = await asyncio.gather(*served, *late, return_exceptions=True)
        busy = [r for r in results if isinstance(r, PoolBusy)]
        assert busy, "nothing was refused though the queue held twice the timeout"
        assert not [r for r in results if isinstance(r, PoolTimeout)], "refused late instead of at once"
        assert all(isinstance(r, GenerationResult) for r in results[:4])  # those that fit were served
        assert time.perf_counter() - t0 < 3.0
        assert pool.stats.rejected == len(busy) and pool.stats.timed_out == 0
        late_prefixes = [f"late{i}" for i, r in enumerate(results[4:]) if isinstance(r, PoolBusy)]
    assert not set(late_prefixes) & set(gen.seen_prefixes()), "a refused request was decoded"


async def test_timeouts_leave_the_pool_healthy_and_drop_the_queued_request():
    gen = FakeGenerator(gate=threading.Event())
    async with running(gen, timeout_s=0.2, batch_wait_ms=0, max_batch=1) as pool:
        stuck = asyncio.create_task(pool.generate(req("stuck")))
        await until(lambda: len(gen.batches) == 1)
        with pytest.raises(PoolTimeout) as timeout:
            await pool.generate(req("behind"))  # waits in the queue the whole time
        assert timeout.value.user_message
        with pytest.raises(PoolTimeout):
            await stuck  # in flight when its time ran out

        gen.gate.set()  # type: ignore[union-attr]
        result = await pool.generate(req("next"))
        assert result.captions[0].boxes[1].startswith("next #")
        assert pool.stats.timed_out == 2
    assert gen.seen_prefixes() == ["stuck", "next"], "a timed-out queued request must not be decoded"


async def test_cancelled_requests_are_dropped_and_the_pool_keeps_serving():
    gen = FakeGenerator(gate=threading.Event())
    async with running(gen, batch_wait_ms=0, max_batch=1) as pool:
        in_flight = asyncio.create_task(pool.generate(req("in flight")))
        await until(lambda: len(gen.batches) == 1)
        waiting = asyncio.create_task(pool.generate(req("gave up")))
        kept = asyncio.create_task(pool.generate(req("kept")))
        await asyncio.sleep(0.01)

        # The user's interaction expired: their task is cancelled, queued and running alike.
        waiting.cancel()
        in_flight.cancel()
        await asyncio.wait([waiting, in_flight])  # both have withdrawn; the batch is still held
        gen.gate.set()  # type: ignore[union-attr]
        result = await kept
        assert result.captions[0].boxes[1].startswith("kept #")
        assert (await pool.generate(req("next"))).captions
        assert waiting.cancelled() and in_flight.cancelled()
        assert pool.stats.cancelled == 2
        assert pool.stats.requests == 2  # the abandoned in-flight result was discarded, not delivered
    assert gen.seen_prefixes() == ["in flight", "kept", "next"]
    assert gen.abandoned == ["in flight"], "the running batch must be told, so it stops decoding it"


async def test_invalid_request_is_refused_before_it_can_spoil_a_batch():
    gen = FakeGenerator()
    async with running(gen, batch_wait_ms=20) as pool:
        good = asyncio.create_task(pool.generate(req("good")))
        with pytest.raises(InvalidRequest, match="method"):
            await pool.generate(req("bad", method="telepathy"))
        with pytest.raises(InvalidRequest, match="n must be"):
            await pool.generate(req("bad", n=0))
        assert (await good).captions
    assert gen.seen_prefixes() == ["good"]


# ---- failures and shutdown --------------------------------------------------------------------


async def test_generator_exception_fails_only_that_batch(caplog: pytest.LogCaptureFixture):
    gen = FakeGenerator(fail_on_prefix="boom")
    async with running(gen, batch_wait_ms=30, max_batch=8) as pool:
        before = await pool.generate(req("before"))
        doomed = await asyncio.gather(
            pool.generate(req("boom")), pool.generate(req("neighbour")), return_exceptions=True
        )
        after = await asyncio.gather(*(pool.generate(req(f"after{i}")) for i in range(3)))
        stats = pool.stats

    assert before.captions and all(r.captions for r in after)
    assert all(isinstance(e, GenerationFailed) for e in doomed)
    error = doomed[0]
    assert isinstance(error, PoolError) and error.user_message
    assert isinstance(error.__cause__, RuntimeError) and "caught fire" in str(error.__cause__)
    assert stats.failed == 2 and stats.requests == 4
    assert any(
        "failed" in r.getMessage() and r.exc_info for r in caplog.records if r.levelno == logging.ERROR
    )


async def test_a_request_done_early_reaches_its_caller_while_its_batch_still_runs():
    gen = FakeGenerator(gate=threading.Event(), early=("short",))
    async with running(gen, batch_wait_ms=30, max_batch=8) as pool:
        short = asyncio.create_task(pool.generate(req("short", seed=1)))
        long = asyncio.create_task(pool.generate(req("long", seed=2)))
        result = await asyncio.wait_for(short, 5)  # the gate still holds the batch
        assert len(gen.batches) == 1 and len(gen.batches[0]) == 2
        assert result == answer(req("short", seed=1))
        assert not long.done()
        gen.gate.set()  # type: ignore[union-attr]
        assert await long == answer(req("long", seed=2))
        stats = pool.stats
    assert stats.requests == 2 and stats.batches == 1  # answered once each, not twice


async def test_a_batch_that_fails_late_keeps_the_answers_it_already_gave():
    gen = FakeGenerator(fail_on_prefix="boom", early=("done first",))
    async with running(gen, batch_wait_ms=30, max_batch=8) as pool:
        first, boom, neighbour = await asyncio.gather(
            pool.generate(req("done first")),
            pool.generate(req("boom")),
            pool.generate(req("neighbour")),
            return_exceptions=True,
        )
        stats = pool.stats
    assert len(gen.batches) == 1
    assert isinstance(first, GenerationResult) and first.captions
    assert isinstance(boom, GenerationFailed) and isinstance(neighbour, GenerationFailed)
    assert stats.failed == 2 and stats.requests == 1


async def test_close_finishes_in_flight_work_and_fails_every_queued_request():
    gen = FakeGenerator(gate=threading.Event())
    pool = ModelPool([lambda: gen], batch_wait_ms=0, max_batch=1)
    await pool.start(warmup=False)
    in_flight = asyncio.create_task(pool.generate(req("in flight")))
    await until(lambda: len(gen.batches) == 1)
    queued = [asyncio.create_task(pool.generate(req(f"queued{i}"))) for i in range(5)]
    await asyncio.sleep(0.01)

    closing = asyncio.create_task(pool.close())
    done, _ = await asyncio.wait(queued, timeout=1)
    assert len(done) == 5, "queued requests must fail at once, not wait for the batch"
    assert all(isinstance(t.exception(), PoolClosed) for t in queued)
    assert not in_flight.done()

    gen.gate.set()  # type: ignore[union-attr]
    await asyncio.wait_for(closing, 5)
    assert (await in_flight).captions, "a batch already decoding is finished, not dropped"
    with pytest.raises(PoolClosed):
        await pool.generate(req("too late"))
    assert gen.seen_prefixes() == ["in flight"]


# ---- the event loop stays free -----------------------------------------------------------------


@dataclass
class MatmulGenerator:
    """CPU-bound torch work for a fixed time per batch; torch releases the GIL while it multiplies."""

    batch_s: float = 0.15
    model_id: str = "matmul"

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_result: ResultCallback | None = None,
        abandoned: Abandoned | None = None,
    ) -> list[GenerationResult]:
        x = torch.randn(192, 192)
        w = torch.randn(192, 192) / 14
        end = time.perf_counter() + self.batch_s
        while time.perf_counter() < end:
            x = torch.tanh(x @ w)
        return [GenerationResult([Caption([r.prefix], 0.0)]) for r in requests]


async def test_event_loop_stays_responsive_while_the_pool_is_saturated():
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        last = loop.time()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = loop.time()
            gaps.append(now - last)
            last = now

    pool = ModelPool([MatmulGenerator], max_batch=4, batch_wait_ms=1)
    await pool.start()  # as in production: torch's one-time setup happens before traffic
    beat = asyncio.create_task(heartbeat())
    try:
        results = await asyncio.gather(*(pool.generate(req(f"p{i}")) for i in range(16)))
    finally:
        stop.set()
        await beat
        await pool.close()
    assert [r.captions[0].boxes[0] for r in results] == [f"p{i}" for i in range(16)]
    assert pool.stats.batches >= 4  # ~0.6 s of back-to-back batches, each longer than the limit below
    assert max(gaps) < 0.1, (
        f"event loop stalled {max(gaps) * 1000:.0f} ms at beat {gaps.index(max(gaps))} of {len(gaps)}"
    )


# ---- built from config, with the real generator -------------------------------------------------


def test_device_setting_resolves_to_worker_devices():
    assert resolve_devices("cpu") == ["cpu"]
    auto = resolve_devices("auto")
    if torch.cuda.is_available():
        assert auto == [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        with pytest.raises(ValueError, match="does not exist"):
            resolve_devices(f"cuda:{torch.cuda.device_count()}")
    else:
        assert auto == ["cpu"]
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_devices("cuda:0")
    with pytest.raises(ValueError, match='"auto", "cpu"'):
        resolve_devices("tpu")


@pytest.mark.slow  # only the first user of the session's tiny checkpoint pays for training it
@pytest.mark.timeout(300)
async def test_pool_from_config_serves_the_real_model(tiny_checkpoint):
    pool = ModelPool.from_config(ModelConfig(device="auto", threads=2, batch_wait_ms=20), tiny_checkpoint)
    await pool.start()  # loads in the worker thread, then warms up through it
    try:
        assert pool.model_id
        greedy = [
            GenerationRequest(t, method="greedy", n_boxes=len(b)) for t, b in SYNTHETIC_CAPTIONS.items()
        ]
        target = GenerationRequest("Ancient-Aliens", method="sample", temperature=1.5, seed=42, n=2)
        alone = await pool.generate(target)
        results = await asyncio.gather(*(pool.generate(r) for r in [*greedy[:2], target, *greedy[2:]]))
    finally:
        await pool.close()
    for request, result in zip(greedy, [*results[:2], *results[3:]], strict=True):
        assert result.captions[0].boxes == SYNTHETIC_CAPTIONS[request.template]
    assert [c.boxes for c in results[2].captions] == [c.boxes for c in alone.captions]
    assert pool.stats.max_batch_size == 5


def test_the_batch_clock_counts_batches_not_rows():
    """What the pool and the serving replica shed load by: batches ahead x seconds per batch."""
    from model.pool import SHED_AT, BatchClock

    clock = BatchClock()
    assert clock.wait_s(rows_ahead=64, rows=8, max_batch=64, decoding=1) is None  # nothing measured yet
    clock.observe(2.0)
    assert clock.wait_s(rows_ahead=0, rows=8, max_batch=64, decoding=1) is None  # a lone request goes in
    # 64 rows ahead + 8 of its own = 2 batches, after the one decoding now: 3 x 2 s.
    assert clock.wait_s(rows_ahead=64, rows=8, max_batch=64, decoding=1) == 6.0
    assert clock.wait_s(rows_ahead=64, rows=8, max_batch=64, decoding=1, workers=2) == 3.0
    clock.observe(4.0)  # a moving average: 0.7 x 2 + 0.3 x 4
    assert clock.batch_s == pytest.approx(2.6)
    assert clock.too_long(SHED_AT * 20 + 0.1, timeout_s=20) and not clock.too_long(SHED_AT * 20, timeout_s=20)
    assert not clock.too_long(None, timeout_s=20)
