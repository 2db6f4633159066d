"""The model as a service: a Ray Serve deployment that batches requests from every bot process.

`memebot serve-model` deploys `CaptionDeployment` behind Ray Serve's HTTP proxy; bot processes
with `[model] endpoint` set talk to it through model/remote.py. Each replica loads one generator
(one GPU, or the CPU) exactly as a ModelPool worker does (GeneratorLoader), warms it up, and
serves four routes (model/wire.py): POST /generate and /score, GET /info and /stats.

Batching is `@serve.batch`: the requests waiting in a replica are decoded together, up to
`max_batch` rows (a request's rows as the pool counts them: `request_rows`, so eight best-of-8
requests fill 64), each answered as soon as its own captions are done. One difference from the
pool needed a rule of our own: Serve forms the next batch as soon as its wait window closes, even
while the previous batch is still decoding, so under load it queued many batches of one or two
requests behind the running one. Here a request enters Serve's batch queue only while the
replica's decoding thread is free (`hold_while_busy`), so what queued during a batch forms the
next batch together: the pool's rule. docs/deploy.md has the figures for both.

Ray Serve owns the rest: `max_queued_requests` per proxy (past it a 429, which the client turns
into PoolBusy), `max_ongoing_requests` per replica, replicas placed on hosts with the GPUs they
ask for (`ray_actor_options`), and autoscaling between `replicas` and `max_replicas` on the
requests each replica has in hand. A caller that leaves (timeout, cancel) closes its connection;
the proxy then cancels its request here, which takes it out of the batch it waits for, or out of
the decoding batch at the next pass (the generator's `abandoned` callback).

Only `memebot serve-model` and its test import this module (it imports Ray); bot processes use
model/remote.py and need no Ray.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse

from model import wire
from model.pool import (
    WARMUP_REQUEST,
    BatchClock,
    GenerationFailed,
    GeneratorLoader,
    InvalidRequest,
    PoolBusy,
    PoolStats,
    check_request,
    check_scoring,
)
from model.requests import GenerationRequest, GenerationResult, TemplateScores, request_rows

logger = logging.getLogger(__name__)

APP_NAME = "memebot"
_T = TypeVar("_T")


@dataclass(frozen=True)
class ReplicaSettings:
    """What each replica is built from; pickled to wherever Ray places it, so the paths in
    `loader` must exist there too (the same checkout or image on every host)."""

    loader: GeneratorLoader
    max_batch: int = 64  # rows decoded together at most (the pool's max_batch)
    batch_wait_ms: float = 0.0  # @serve.batch's window, from the first request of a batch
    # The pool's batching rule (see the module's docstring); False leaves Serve's own.
    hold_while_busy: bool = True
    # The bots' [model] timeout_s: a request whose queued decoding here would take more than
    # SHED_AT of it is answered 429 (the client's PoolBusy) at once, as the pool does.
    timeout_s: float = 20.0


@dataclass(frozen=True)
class ServeOptions:
    """How Ray Serve runs the deployment: where it listens, how many replicas, on what."""

    host: str = "127.0.0.1"  # the proxy's address: 0.0.0.0 for bots on other hosts
    port: int = 8000
    replicas: int = 1  # at start, and the fewest while autoscaling
    max_replicas: int = 0  # above `replicas`: autoscale up to this many; 0 = fixed at `replicas`
    # Autoscaling aims at this many requests in hand per replica (queued in it or decoding).
    target_ongoing: float = 16.0
    num_cpus: float = 1.0  # reserved per replica
    num_gpus: float = 0.0  # per replica; > 0 places replicas on GPU hosts only and decodes on the GPU
    # Requests one replica takes at once: its batch queue plus the batch decoding. At least
    # max_batch (a batch of one-row requests), else batches can never fill.
    max_ongoing: int = 128
    queue_size: int = 512  # requests waiting in each proxy before 429 (the client's PoolBusy)

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas > self.replicas


@dataclass(eq=False)  # identity equality: a batch holds each job once
class _Job:
    request: GenerationRequest
    rows: int  # its size in a batch, at most max_batch so that a larger one runs alone
    answer: asyncio.Future[GenerationResult]
    abandoned: bool = False  # set on the replica's loop, read by the decoding thread between passes


def _batch_rows(jobs: list[_Job]) -> int:
    """@serve.batch's batch_size_fn: a batch's size is its rows, as in the pool."""
    return sum(job.rows for job in jobs)


@serve.deployment(name="CaptionModel")
class CaptionDeployment:
    """One replica: one generator on one device, its decoding on one thread of its own."""

    def __init__(self, settings: ReplicaSettings) -> None:
        self.settings = settings
        # One thread: the generator never sees two callers, and scoring waits its turn.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-replica")
        started = time.perf_counter()
        self._generator = self._thread.submit(settings.loader).result()
        self._thread.submit(self._generator.generate_batch, [WARMUP_REQUEST]).result()
        self.load_s = time.perf_counter() - started
        self._decode_batch.set_max_batch_size(settings.max_batch)
        self._decode_batch.set_batch_wait_timeout_s(settings.batch_wait_ms / 1000)
        self._free = asyncio.Event()  # the decoding thread has no batch: requests may queue for one
        self._free.set()
        self._waiting: set[_Job] = set()  # taken in, not yet in a decoding batch
        self._clock = BatchClock()
        self._stats = PoolStats()
        logger.info(
            "replica ready in %.1f s: model %s on %s",
            self.load_s,
            self._generator.model_id,
            settings.loader.device,
        )

    async def __call__(self, http: Request) -> JSONResponse:
        route = (http.method, http.url.path.rstrip("/") or "/")
        try:
            if route == ("POST", wire.GENERATE):
                request = wire.request_from_json(await _body(http))
                check_request(request)
                return JSONResponse(wire.result_to_json(await self._generate(request)))
            if route == ("POST", wire.SCORE):
                scoring = wire.scoring_from_json(await _body(http))
                check_scoring(scoring)
                return JSONResponse(wire.scores_to_json(await self._score(scoring.text, scoring.templates)))
            if route == ("GET", wire.INFO):
                return JSONResponse(self._info())
            if route == ("GET", wire.STATS):
                return JSONResponse(wire.stats_to_json(self._stats))
        except InvalidRequest as exc:
            return JSONResponse(wire.error_to_json(exc), status_code=400)
        except PoolBusy as exc:
            return JSONResponse(wire.error_to_json(exc), status_code=429)
        except GenerationFailed as exc:
            return JSONResponse(wire.error_to_json(exc), status_code=500)
        routes = f"POST {wire.GENERATE}, POST {wire.SCORE}, GET {wire.INFO}, GET {wire.STATS}"
        return JSONResponse({"error": "NotFound", "detail": f"no such route; try {routes}"}, status_code=404)

    def _info(self) -> dict[str, Any]:
        s = self.settings
        return {
            "model_id": self._generator.model_id,
            "device": s.loader.device,
            "max_batch": s.max_batch,
            "batch_wait_ms": s.batch_wait_ms,
            "hold_while_busy": s.hold_while_busy,
            "replica": serve.get_replica_context().replica_id.unique_id,
            "load_s": round(self.load_s, 2),
        }

    # ---- generation: @serve.batch ---------------------------------------------------------

    async def _generate(self, request: GenerationRequest) -> GenerationResult:
        loop = asyncio.get_running_loop()
        job = _Job(request, min(request_rows(request), self.settings.max_batch), loop.create_future())
        ahead = sum(j.rows for j in self._waiting if not j.abandoned)
        decoding = 0 if self._free.is_set() else 1
        wait = self._clock.wait_s(ahead, job.rows, self.settings.max_batch, decoding)
        if self._clock.too_long(wait, self.settings.timeout_s):
            self._stats.rejected += 1
            raise PoolBusy(f"the replica holds about {wait:.0f} s of decoding, more than its callers wait")
        batch_call: asyncio.Future[None] | None = None
        self._waiting.add(job)
        try:
            if self.settings.hold_while_busy:
                await self._free.wait()
            # The batch call runs as a task of its own so that this caller is answered by its
            # job's future, as soon as its captions are done, not when its whole batch is.
            batch_call = asyncio.ensure_future(self._decode_batch(job))
            batch_call.add_done_callback(functools.partial(_settle_from_batch, job))
            result = await job.answer
        except asyncio.CancelledError:
            # The caller left: out of Serve's batch queue if its batch has not started, else the
            # decoding drops it at its next pass.
            job.abandoned = True
            if batch_call is not None:
                batch_call.cancel()
            self._stats.cancelled += 1
            raise
        finally:
            self._waiting.discard(job)
        self._stats.requests += 1
        return result

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0, batch_size_fn=_batch_rows)
    async def _decode_batch(self, jobs: list[_Job]) -> list[None]:
        """One batch on the decoding thread; answers go to the jobs' futures, not the return."""
        self._free.clear()
        self._waiting.difference_update(jobs)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()

        def answer_soon(i: int, result: GenerationResult) -> None:  # on the decoding thread
            loop.call_soon_threadsafe(_settle, jobs[i], result)

        try:
            results = await loop.run_in_executor(
                self._thread,
                self._busy,
                self._generator.generate_batch,
                [job.request for job in jobs],
                answer_soon,
                lambda i: jobs[i].abandoned,
            )
        except Exception as exc:
            logger.error("a batch of %d request(s) failed", len(jobs), exc_info=exc)
            for job in jobs:
                if not job.answer.done():
                    self._stats.failed += 1
                    job.answer.set_exception(
                        GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}")
                    )
        else:
            for job, result in zip(jobs, results, strict=True):
                _settle(job, result)
            if not any(job.abandoned for job in jobs):  # a batch cut short says nothing of the time
                self._clock.observe(time.perf_counter() - started)
        finally:
            self._free.set()
            self._stats.batches += 1
            self._stats.batch_sizes[len(jobs)] += 1
            self._stats.batch_rows[_batch_rows(jobs)] += 1
        return [None] * len(jobs)

    # ---- scoring: a pass of its own on the same thread ------------------------------------

    async def _score(self, text: str, templates: tuple[str, ...]) -> TemplateScores:
        try:
            scores = await asyncio.get_running_loop().run_in_executor(
                self._thread, self._busy, self._generator.score_templates, text, templates
            )
        except Exception as exc:
            logger.error("scoring templates failed", exc_info=exc)
            self._stats.failed += 1
            raise GenerationFailed(f"scoring failed: {type(exc).__name__}: {exc}") from exc
        self._stats.scored += 1
        return scores

    def _busy(self, work: Callable[..., _T], *args: Any) -> _T:
        """`work(*args)` on the decoding thread, its time counted busy (the wait for the thread
        is not: a batch may wait there for a scoring pass)."""
        started = time.perf_counter()
        try:
            return work(*args)
        finally:
            self._stats.busy_s += time.perf_counter() - started  # only this thread writes it


def _settle(job: _Job, result: GenerationResult) -> None:
    if not job.answer.done():  # done: answered early, or its caller left
        job.answer.set_result(result)


def _settle_from_batch(job: _Job, batch_call: asyncio.Future[Any]) -> None:
    """The batch call ended: a failure Serve raised before our batch function ran (or around
    it) still reaches the caller instead of leaving it waiting."""
    if batch_call.cancelled():
        return
    error = batch_call.exception()
    if error is not None and not job.answer.done():
        job.answer.set_exception(GenerationFailed(f"batching failed: {type(error).__name__}: {error}"))


async def _body(http: Request) -> Any:
    try:
        return await http.json()
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not JSON: {exc}") from exc


# ---- deploying --------------------------------------------------------------------------


def build_app(settings: ReplicaSettings, options: ServeOptions) -> Application:
    """The deployment with its replicas, resources and queue limits, bound to its settings."""
    deployment_options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": options.num_cpus, "num_gpus": options.num_gpus},
        "max_ongoing_requests": options.max_ongoing,
        "max_queued_requests": options.queue_size,
        # 429, not Serve's default 503: "busy, try again", told apart from "no replica is up".
        "backpressure_config": {"status_code": 429},
    }
    if options.autoscaling:
        deployment_options["autoscaling_config"] = {
            "min_replicas": options.replicas,
            "initial_replicas": options.replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing,
        }
    else:
        deployment_options["num_replicas"] = options.replicas
    return CaptionDeployment.options(**deployment_options).bind(settings)


def deploy(settings: ReplicaSettings, options: ServeOptions) -> str:
    """Start Serve's HTTP proxy and the deployment on the Ray instance this process is connected
    to (ray.init first); returns once every replica has loaded and warmed up. The endpoint URL
    for `[model] endpoint` (with the host a bot on another machine would use when bound to all)."""
    serve.start(http_options={"host": options.host, "port": options.port})
    serve.run(build_app(settings, options), name=APP_NAME, route_prefix="/", blocking=False)
    host = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
    return f"http://{host}:{options.port}"


def shutdown() -> None:
    """Take the deployment and Serve's proxy and controller down (Ray itself stays up)."""
    serve.shutdown()
