"""The model pool: generation off the event loop, with dynamic micro-batching.

Callers `await pool.generate(request)`. Requests wait in one shared queue; each worker
(one per generator: one per GPU, or one on the CPU) owns a dedicated thread that runs
`generate_batch`, and an asyncio task that feeds it. When a worker is free it takes the
oldest request, waits at most `batch_wait_ms` from that request's arrival for company, then
decodes everything that fits in `max_batch` rows together; each caller is answered as soon as its
own request is done, not when the whole batch is; a caller that gives up (timeout, or its
task cancelled) leaves a running batch at its next pass. Torch releases the GIL while
it computes, so the event loop keeps serving chat traffic while a batch runs.

A request's size is the rows it decodes: `n` for greedy, the larger of `n` and `best_of`
for sampling, `beam_width` for beam search. A request larger than `max_batch` runs alone rather than never.

`await pool.score_templates(text, templates)` ranks templates by how likely the text is under
each (model/pick.py), for picking the template from a user's words. It waits in the same queue
(so the same queue limit, timeout and close apply) and runs on a worker's thread as a pass of
its own when it is the oldest request waiting. A generation batch never stops at it: requests
queued behind it join the batch in front of it, so it delays generation by no more than its pass.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from model.requests import (
    METHODS,
    Abandoned,
    GenerationRequest,
    GenerationResult,
    ResultCallback,
    ScoringRequest,
    TemplateScores,
    request_rows,
)
from model.vocab import normalize_user_text

if TYPE_CHECKING:
    from common.config import ModelConfig

logger = logging.getLogger(__name__)

# What start() sends through every worker, so the first user does not pay for lazy
# initialisation (CUDA context, kernel selection, allocator growth).
WARMUP_REQUEST = GenerationRequest(template="", method="greedy", max_length=4)
MAX_BEST_OF = 64  # candidates one request may ask for (rows in a batch)
# A request is refused at once ("busy") when the decoding queued ahead of it, at the measured
# rate, would take more than this share of the timeout: the rate is an average, batches vary.
SHED_AT = 0.8


class BatchGenerator(Protocol):
    model_id: str

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_result: ResultCallback | None = None,
        abandoned: Abandoned | None = None,
    ) -> list[GenerationResult]:
        """One result per request, in order. May mix methods and templates; raising fails the
        requests not yet answered. May call on_result(i, result) from its thread as soon as
        request i is done, so that its caller need not wait for the rest of the batch; may
        stop decoding request i once abandoned(i) is true (its result is then discarded)."""
        ...

    def score_templates(self, text: str, templates: Sequence[str] = ()) -> TemplateScores:
        """`templates` (dataset names; () = every one it knows) ranked by how likely `text` is
        under each, best first; templates it does not know are left out."""
        ...


# ---- errors -----------------------------------------------------------------------------


class PoolError(Exception):
    """A generation the pool could not deliver; `user_message` is safe to show a chat user."""

    user_message = "Something went wrong making your meme. Please try again."

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.user_message)


class PoolBusy(PoolError):
    user_message = "The meme machine is busy, try again in a few seconds."


class PoolTimeout(PoolError):
    user_message = "That meme took too long to make. Please try again."


class GenerationFailed(PoolError):
    user_message = "The meme machine hiccuped on that one. Please try again."


class PoolClosed(PoolError):
    user_message = "The meme machine is restarting. Try again in a moment."


class InvalidRequest(PoolError, ValueError):
    """Refused before queueing, so one bad request never fails the batch it would join."""

    user_message = "Those meme settings are not valid."


# ---- stats ------------------------------------------------------------------------------


@dataclass
class PoolStats:
    batches: int = 0  # batches decoded (warm-up not counted)
    requests: int = 0  # requests answered
    scored: int = 0  # score_templates calls answered
    failed: int = 0  # requests failed because their batch (or scoring pass) raised
    timed_out: int = 0
    cancelled: int = 0  # callers that gave up (their task was cancelled)
    rejected: int = 0  # PoolBusy answers
    busy_s: float = 0.0  # seconds workers spent inside generate_batch and score_templates
    batch_sizes: Counter[int] = field(default_factory=Counter)  # requests per batch -> batches
    batch_rows: Counter[int] = field(default_factory=Counter)  # rows per batch -> batches

    @property
    def max_batch_size(self) -> int:
        return max(self.batch_sizes, default=0)

    @property
    def mean_batch_size(self) -> float:
        return sum(k * v for k, v in self.batch_sizes.items()) / max(1, self.batches)

    def snapshot(self) -> PoolStats:
        """A copy, safe to keep and compare while the original goes on counting."""
        return replace(self, batch_sizes=Counter(self.batch_sizes), batch_rows=Counter(self.batch_rows))


# ---- shedding load ----------------------------------------------------------------------


@dataclass
class BatchClock:
    """How long the decoding queued ahead of a request will take, from the seconds recent whole
    batches took: the pool and the serving replica (model/serve.py) both refuse a request at
    once ("busy") when that passes SHED_AT of the timeout, rather than let it time out in the
    queue after part of its decoding was done for nothing."""

    batch_s: float | None = None  # moving average of one whole batch; None until one has run

    def observe(self, seconds: float) -> None:
        self.batch_s = seconds if self.batch_s is None else 0.7 * self.batch_s + 0.3 * seconds

    def wait_s(
        self, rows_ahead: int, rows: int, max_batch: int, decoding: int, workers: int = 1
    ) -> float | None:
        """Seconds until a request of `rows` rows is decoded: the `decoding` batches running now,
        then the batches the rows ahead of it and its own fill (counted in batches, not rows: a
        batch of 64 rows costs far less than 8 of 8, most of all on a GPU). None when nothing is
        waiting ahead (a lone request is always let in) or no batch has run yet."""
        if not rows_ahead or self.batch_s is None:
            return None
        batches = decoding + math.ceil((rows_ahead + rows) / max_batch)
        return batches * self.batch_s / max(1, workers)

    def too_long(self, wait_s: float | None, timeout_s: float) -> bool:
        return wait_s is not None and wait_s > SHED_AT * timeout_s


# ---- the pool ---------------------------------------------------------------------------


@dataclass(eq=False)  # identity equality: a job is removed from the queue by identity
class _Job:
    request: GenerationRequest | ScoringRequest
    future: asyncio.Future[Any]  # a GenerationResult, or TemplateScores for a ScoringRequest
    rows: int  # rows in a batch; a scoring job is never batched
    enqueued_at: float  # loop.time()
    # Set on the loop when the caller gives up; the worker thread reads it between passes (a
    # plain bool: one reader, one writer, the GIL makes each access whole).
    abandoned: bool = False

    @property
    def scoring(self) -> bool:
        return isinstance(self.request, ScoringRequest)


@dataclass
class _Worker:
    index: int
    thread: ThreadPoolExecutor  # exactly one thread, so the generator never sees two callers
    generator: BatchGenerator


def check_request(request: GenerationRequest) -> None:
    """Raise InvalidRequest for settings the generator would reject."""
    problems = []
    if request.method not in METHODS:
        problems.append(f"method must be one of {', '.join(METHODS)}, got {request.method!r}")
    if request.n < 1:
        problems.append(f"n must be at least 1, got {request.n}")
    if request.max_length < 1:
        problems.append(f"max_length must be at least 1, got {request.max_length}")
    if request.method == "sample" and not request.temperature > 0:
        problems.append(f"temperature must be positive, got {request.temperature}")
    if not 0 < request.top_p <= 1:
        problems.append(f"top_p must be in (0, 1], got {request.top_p}")
    if request.top_k < 0:
        problems.append(f"top_k must not be negative, got {request.top_k}")
    if not 1 <= request.best_of <= MAX_BEST_OF:
        problems.append(f"best_of must be from 1 to {MAX_BEST_OF}, got {request.best_of}")
    if not 0 <= request.rank_length_power <= 1:
        problems.append(f"rank_length_power must be from 0 to 1, got {request.rank_length_power}")
    if request.beam_width < 1:
        problems.append(f"beam_width must be at least 1, got {request.beam_width}")
    if request.n_boxes < 0:
        problems.append(f"n_boxes must not be negative, got {request.n_boxes}")
    if problems:
        raise InvalidRequest("; ".join(problems))


def check_scoring(request: ScoringRequest) -> None:
    """Raise InvalidRequest for a text with nothing in it to score."""
    if not any(box.strip() for box in normalize_user_text(request.text)):
        raise InvalidRequest("there are no words to pick a template from")


class ModelPool:
    def __init__(
        self,
        generator_factories: Sequence[Callable[[], BatchGenerator]],
        *,
        max_batch: int = 64,
        batch_wait_ms: float = 4.0,
        queue_size: int = 512,
        timeout_s: float = 20.0,
    ) -> None:
        if not generator_factories:
            raise ValueError("ModelPool needs at least one generator factory")
        if max_batch < 1 or queue_size < 1:
            raise ValueError(f"max_batch and queue_size must be at least 1, got {max_batch}, {queue_size}")
        if batch_wait_ms < 0 or timeout_s <= 0:
            raise ValueError(
                f"batch_wait_ms must not be negative and timeout_s must be positive, got {batch_wait_ms}, {timeout_s}"
            )
        self.factories = tuple(generator_factories)
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_ms / 1000
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self._queue: deque[_Job] = deque()
        self._changed = asyncio.Condition()  # queue grew, or the pool closed
        self._workers: list[_Worker] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._stats = PoolStats()
        self._clock = BatchClock()  # how long the queue will take
        self._decoding = 0  # batches being decoded now

    @classmethod
    def from_config(
        cls,
        config: ModelConfig,
        checkpoint: Path,
        draft: Path | None = None,
        kernel_dir: Path | None = None,
        lexicon: Path | None = None,
    ) -> ModelPool:
        """One worker per device that `config.device` names; nothing is loaded until start().
        `draft`: the speculative decoding table, if any; `kernel_dir`: where to build the fused
        CPU decoding kernel, if wanted; `lexicon`: the word lexicon file, if any."""
        loaders = [
            GeneratorLoader.from_config(config, checkpoint, device, draft, kernel_dir, lexicon)
            for device in resolve_devices(config.device)
        ]
        return cls(
            loaders,
            max_batch=config.max_batch,
            batch_wait_ms=config.batch_wait_ms,
            queue_size=config.queue_size,
            timeout_s=config.timeout_s,
        )

    # ---- lifecycle ----------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        if not self._workers:
            raise RuntimeError("the model pool has not started: await pool.start() first")
        return self._workers[0].generator.model_id

    @property
    def stats(self) -> PoolStats:
        """A snapshot, safe to keep and compare."""
        return self._stats.snapshot()

    async def start(self, warmup: bool = True) -> None:
        """Build every generator in its own worker thread (loading a model can take seconds),
        then, if `warmup`, decode one tiny request on each. Raises what a factory or the
        warm-up raised, with nothing left running."""
        if self._closed:
            raise PoolClosed("the model pool is closed; make a new one")
        if self._workers:
            raise RuntimeError("the model pool has already started")
        loop = asyncio.get_running_loop()
        threads = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-worker-{i}")
            for i in range(len(self.factories))
        ]
        try:
            generators = await asyncio.gather(
                *(
                    loop.run_in_executor(t, factory)
                    for t, factory in zip(threads, self.factories, strict=True)
                )
            )
            workers = [_Worker(i, t, g) for i, (t, g) in enumerate(zip(threads, generators, strict=True))]
            if warmup:
                await asyncio.gather(*(self._decode(w, [WARMUP_REQUEST]) for w in workers))
        except BaseException:
            for thread in threads:
                thread.shutdown(wait=False, cancel_futures=True)
            raise
        self._workers = workers
        self._tasks = [asyncio.create_task(self._serve(w), name=f"model-worker-{w.index}") for w in workers]
        for task in self._tasks:
            task.add_done_callback(_log_worker_crash)
        logger.info("model pool started: %d worker(s), model %s", len(workers), self.model_id)

    async def close(self) -> None:
        """Finish the batches being decoded, fail every queued request with PoolClosed."""
        self._closed = True
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(PoolClosed("the model pool closed before this request ran"))
        async with self._changed:
            self._changed.notify_all()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in self._workers:
            worker.thread.shutdown(wait=True)

    # ---- requests -----------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self._check_started()
        check_request(request)
        result: GenerationResult = await self._submit(request, request_rows(request))
        return result

    async def score_templates(self, text: str, templates: Sequence[str] = ()) -> TemplateScores:
        """`templates` (dataset names; () = every one the model knows) ranked by how likely
        `text` (`|` between boxes) is as the start of their captions, best first; those the model
        does not know are left out (an empty ranking if none is left). One pass on a worker's
        thread, in its turn; PoolBusy, PoolTimeout, PoolClosed and InvalidRequest as for generate."""
        self._check_started()
        request = ScoringRequest(text, tuple(templates))
        check_scoring(request)
        scores: TemplateScores = await self._submit(request, rows=0)
        return scores

    def _check_started(self) -> None:
        if self._closed:
            raise PoolClosed("the model pool is closed")
        if not self._workers:
            raise RuntimeError("the model pool has not started: await pool.start() first")

    async def _submit(self, request: GenerationRequest | ScoringRequest, rows: int) -> Any:
        """Queue a request and wait for its answer, within the pool's timeout."""
        if len(self._queue) >= self.queue_size:
            self._stats.rejected += 1
            raise PoolBusy(f"{len(self._queue)} requests are already waiting")
        wait = None if isinstance(request, ScoringRequest) else self._expected_wait_s(rows)
        if self._clock.too_long(wait, self.timeout_s):
            # It would time out in the queue, after part of its decoding was done for nothing:
            # "busy" now instead of after timeout_s. (A saturated CPU measured 3.4 requests
            # decoded per meme delivered without this: README, Speed.)
            self._stats.rejected += 1
            raise PoolBusy(
                f"the queue holds about {wait:.0f} s of decoding, more than the {self.timeout_s:g} s allowed"
            )
        loop = asyncio.get_running_loop()
        job = _Job(request, loop.create_future(), rows, loop.time())
        self._queue.append(job)
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._changed:
                    self._changed.notify_all()
                return await job.future
        except TimeoutError:
            self._withdraw(job)
            self._stats.timed_out += 1
            raise PoolTimeout(f"no result within {self.timeout_s:g} s") from None
        except asyncio.CancelledError:
            self._withdraw(job)
            self._stats.cancelled += 1
            raise

    def _expected_wait_s(self, rows: int) -> float | None:
        ahead = sum(job.rows for job in self._queue if not job.scoring and not job.future.done())
        return self._clock.wait_s(ahead, rows, self.max_batch, self._decoding, len(self._workers))

    def _withdraw(self, job: _Job) -> None:
        """Drop a request its caller gave up on: out of the queue if it has not started, and
        its future cancelled and the running batch told, which stops decoding it."""
        job.abandoned = True
        if job.future.done() and not job.future.cancelled():
            job.future.exception()  # its failure raced the cancel: mark it seen, or asyncio warns
        job.future.cancel()
        try:
            self._queue.remove(job)
        except ValueError:
            pass  # already taken by a worker

    # ---- workers ------------------------------------------------------------------------

    async def _serve(self, worker: _Worker) -> None:
        while True:
            batch = await self._next_batch()
            if batch and batch[0].scoring:
                await self._run_scoring(worker, batch[0])
            elif batch:
                await self._run_batch(worker, batch)
            elif self._closed:
                return

    async def _next_batch(self) -> list[_Job]:
        """Wait for a request, then for the batch window; [] if every waiting request left.
        A scoring job comes alone, [job], and waits for no window."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._queue or self._closed)
            if self._closed:
                return []
            # The window is measured from the oldest request's arrival, so requests that
            # queued up while this worker was busy go at once.
            deadline = self._queue[0].enqueued_at + self.batch_wait_s
            if not self._queue[0].scoring and deadline > asyncio.get_running_loop().time():
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._changed.wait_for(lambda: self._batch_is_full() or self._closed)
                except TimeoutError:
                    pass
            return self._take_batch()

    def _batch_is_full(self) -> bool:
        rows = 0
        for job in self._queue:  # stops early: the queue can be far longer than a batch
            rows += 0 if job.future.done() or job.scoring else job.rows
            if rows >= self.max_batch:
                return True
        return False

    def _take_batch(self) -> list[_Job]:
        """The oldest requests that fit in max_batch rows (first come, first served). A scoring
        job is a pass of its own: taken alone when it is the oldest, else passed over (it keeps
        its place at the front) so that it never cuts a generation batch short."""
        batch: list[_Job] = []
        passed_over: list[_Job] = []
        rows = 0
        while self._queue:
            job = self._queue[0]
            if job.future.done():  # cancelled between its caller's cancel and its cleanup
                self._queue.popleft()
                continue
            if job.scoring:
                if not batch:
                    return [self._queue.popleft()]
                passed_over.append(self._queue.popleft())
                continue
            if batch and rows + job.rows > self.max_batch:
                break
            batch.append(self._queue.popleft())
            rows += job.rows
        self._queue.extendleft(reversed(passed_over))
        return batch

    async def _run_batch(self, worker: _Worker, batch: list[_Job]) -> None:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        self._decoding += 1

        def answer_soon(i: int, result: GenerationResult) -> None:  # in the worker's thread
            loop.call_soon_threadsafe(self._answer, batch[i], result)

        try:
            results = await self._decode(
                worker, [job.request for job in batch], answer_soon, lambda i: batch[i].abandoned
            )
        except asyncio.CancelledError:
            # The loop is shutting down under us: nobody may be left waiting.
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(PoolClosed("the model pool stopped while decoding"))
            raise
        except Exception as exc:
            unanswered = [job for job in batch if not job.future.done()]
            logger.error(
                "model worker %d: a batch of %d request(s) failed (%d unanswered)",
                worker.index,
                len(batch),
                len(unanswered),
                exc_info=exc,
            )
            self._stats.failed += len(unanswered)
            for job in unanswered:
                error = GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                job.future.set_exception(error)
        else:
            for job, result in zip(batch, results, strict=True):
                self._answer(job, result)
            if not any(job.abandoned for job in batch):  # a batch cut short says nothing of the rate
                self._clock.observe(time.perf_counter() - started)
        finally:
            self._decoding -= 1
            self._stats.batches += 1
            self._stats.batch_sizes[len(batch)] += 1
            self._stats.batch_rows[sum(job.rows for job in batch)] += 1
            self._stats.busy_s += time.perf_counter() - started

    async def _run_scoring(self, worker: _Worker, job: _Job) -> None:
        """One scoring pass on the worker's own thread. It cannot be stopped halfway: a caller
        that gave up meanwhile just gets no answer."""
        started = time.perf_counter()
        assert isinstance(job.request, ScoringRequest)
        request = job.request
        try:
            scores = await asyncio.get_running_loop().run_in_executor(
                worker.thread, worker.generator.score_templates, request.text, request.templates
            )
        except asyncio.CancelledError:
            if not job.future.done():  # the loop is shutting down under us
                job.future.set_exception(PoolClosed("the model pool stopped while scoring"))
            raise
        except Exception as exc:
            logger.error("model worker %d: scoring templates failed", worker.index, exc_info=exc)
            if not job.future.done():
                self._stats.failed += 1
                error = GenerationFailed(f"scoring failed: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                job.future.set_exception(error)
        else:
            self._answer(job, scores)
        finally:
            self._stats.busy_s += time.perf_counter() - started

    def _answer(self, job: _Job, result: GenerationResult | TemplateScores) -> None:
        if not job.future.done():  # done = answered early, or its caller gave up meanwhile
            job.future.set_result(result)
            if job.scoring:
                self._stats.scored += 1
            else:
                self._stats.requests += 1

    async def _decode(
        self,
        worker: _Worker,
        requests: list[GenerationRequest],
        on_result: ResultCallback | None = None,
        abandoned: Abandoned | None = None,
    ) -> list[GenerationResult]:
        """Run one batch on the worker's own thread, leaving the event loop free."""
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(
            worker.thread, worker.generator.generate_batch, requests, on_result, abandoned
        )
        if len(results) != len(requests):
            raise RuntimeError(f"the generator returned {len(results)} results for {len(requests)} requests")
        return results


def _log_worker_crash(task: asyncio.Task[None]) -> None:
    # A worker only ends on close(); anything else is a bug in the pool, never to pass silently.
    if not task.cancelled() and task.exception() is not None:
        logger.critical("%s stopped unexpectedly", task.get_name(), exc_info=task.exception())


# ---- building from config ---------------------------------------------------------------


def resolve_devices(device: str) -> list[str]:
    """The config's device setting -> the torch devices to run one worker on each."""
    import torch

    if device == "cpu":
        return ["cpu"]
    if device == "auto":
        if torch.cuda.is_available():
            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return ["cpu"]
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f'[model] device is "{device}" but no CUDA GPU is usable here; use "auto" or "cpu"'
            )
        index = device.partition(":")[2] or "0"
        count = torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise ValueError(
                f'[model] device "{device}" does not exist: this machine has cuda:0 to cuda:{count - 1}'
            )
        return [f"cuda:{index}"]
    raise ValueError(f'[model] device must be "auto", "cpu", "cuda" or "cuda:N", got "{device}"')


@dataclass(frozen=True)
class GeneratorLoader:
    """A worker's factory: loads the checkpoint on one device, inside the worker's thread."""

    checkpoint: Path
    device: str
    threads: int
    quantize: bool = False
    compile: bool = False
    draft: Path | None = None
    half_weights: bool = False
    kernel_dir: Path | None = None
    lexicon: Path | None = None  # the word lexicon (model/lexicon.py), for requests that want it

    @classmethod
    def from_config(
        cls,
        config: ModelConfig,
        checkpoint: Path,
        device: str,
        draft: Path | None = None,
        kernel_dir: Path | None = None,
        lexicon: Path | None = None,
    ) -> GeneratorLoader:
        """The loader for one device with the `[model]` settings (threads, quantize, compile,
        half weights): what a pool worker, a serving replica and the load test each load."""
        return cls(
            checkpoint,
            device,
            config.threads,
            config.quantize,
            config.compile,
            draft,
            config.half_weights,
            kernel_dir,
            lexicon,
        )

    def __call__(self) -> BatchGenerator:
        # Imported here so the pool (and its tests) do not need the model code loaded.
        from model.generate import load_generator

        return load_generator(
            self.checkpoint,
            device=self.device,
            threads=self.threads,
            quantize=self.quantize,
            compile=self.compile,
            draft=self.draft,
            half_weights=self.half_weights,
            kernel_dir=self.kernel_dir,
            lexicon=self.lexicon,
        )
