"""A client of the model service (`memebot serve-model`), in place of a local ModelPool.

With `[model] endpoint` set, the bot loads no model: `RemoteModel` sends each request over HTTP to
the serving deployment (model/serve.py), which batches requests from every bot process. It has
the pool's interface (`start`, `close`, `generate`, `score_templates`, `model_id`, `stats`) and
its errors, so MemeService cannot tell the two apart:

- the service's queue full (HTTP 429, or 503 while no replica is ready) -> PoolBusy; this
  process's own cap on requests in flight (`queue_size`) full -> PoolBusy before sending;
- no answer within `timeout_s` -> PoolTimeout, and the HTTP request is dropped;
- the caller's task cancelled -> the HTTP request is dropped too. Either way the connection
  closes, Ray Serve's proxy sees the client leave and cancels the request in the replica, which
  takes it out of its batch (as the pool does for a caller that gave up);
- a request the service refuses (HTTP 400) -> InvalidRequest; a failed batch (500) ->
  GenerationFailed; the service unreachable -> PoolClosed ("restarting").

Only aiohttp is needed here (a discord.py dependency): a bot process needs no Ray installed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiohttp

from model import wire
from model.pool import (
    GenerationFailed,
    InvalidRequest,
    PoolBusy,
    PoolClosed,
    PoolError,
    PoolStats,
    PoolTimeout,
    check_request,
    check_scoring,
)
from model.requests import GenerationRequest, GenerationResult, ScoringRequest, TemplateScores

if TYPE_CHECKING:
    from common.config import ModelConfig

logger = logging.getLogger(__name__)

# Reaching the service: a host that does not answer a TCP connection within this is down (its
# requests fail at once with PoolClosed rather than waiting out the whole request timeout).
CONNECT_TIMEOUT_S = 5.0


class RemoteModel:
    """The model pool's interface over HTTP; one per bot process, like the pool it replaces."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = 20.0,
        queue_size: int = 512,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"the model endpoint must be an http:// or https:// URL, got {endpoint!r}")
        if timeout_s <= 0 or queue_size < 1:
            raise ValueError(
                f"timeout_s must be positive and queue_size at least 1, got {timeout_s}, {queue_size}"
            )
        self.endpoint = endpoint.rstrip("/")
        self.timeout_s = timeout_s
        self.queue_size = queue_size
        self.connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._info: dict[str, Any] = {}
        self._in_flight = 0
        self._idle = asyncio.Event()  # set while nothing is in flight: close() waits for it
        self._idle.set()
        self._closed = False
        self._stats = PoolStats()

    @classmethod
    def from_config(cls, config: ModelConfig) -> RemoteModel:
        """The client `[model] endpoint` asks for, with the pool's timeout and queue limit."""
        return cls(config.endpoint, timeout_s=config.timeout_s, queue_size=config.queue_size)

    # ---- lifecycle ----------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        if not self._info:
            raise RuntimeError("the model client has not started: await client.start() first")
        return str(self._info["model_id"])

    @property
    def info(self) -> dict[str, Any]:
        """What the service said about itself at start: model_id, device, max_batch, ..."""
        return dict(self._info)

    @property
    def stats(self) -> PoolStats:
        """This process's side: requests answered, rejected, timed out, cancelled, failed.
        Batches happen in the service: `await server_stats()` has those."""
        return self._stats.snapshot()

    async def start(self, warmup: bool = True) -> None:
        """Connect and ask the service which model it serves. The service warmed its replicas up
        when it deployed them, so `warmup` has nothing left to do. Raises PoolClosed if the
        service does not answer (the bot then refuses to start, as for a model it cannot load)."""
        if self._closed:
            raise PoolClosed("the model client is closed; make a new one")
        if self._session is not None:
            raise RuntimeError("the model client has already started")
        # limit=0: this class caps requests in flight itself (queue_size), with a PoolBusy answer
        # instead of aiohttp's silent wait for a free connection.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s),
        )
        try:
            self._info = await self._call("GET", wire.INFO)
        except BaseException:
            await self._session.close()
            self._session = None
            raise
        logger.info("model service at %s: model %s", self.endpoint, self.model_id)

    async def close(self) -> None:
        """New requests fail with PoolClosed; those in flight get their answers (each within its
        timeout), then the connections close."""
        self._closed = True
        await self._idle.wait()
        if self._session is not None:
            await self._session.close()

    async def server_stats(self) -> PoolStats:
        """The serving replica's batching stats (one replica's: whichever Ray Serve routes this to)."""
        return wire.stats_from_json(await self._call("GET", wire.STATS))

    # ---- requests -----------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        check_request(request)  # refused here, as the pool does, without a round trip
        data = await self._call("POST", wire.GENERATE, wire.request_to_json(request))
        self._stats.requests += 1
        return wire.result_from_json(data)

    async def score_templates(self, text: str, templates: Sequence[str] = ()) -> TemplateScores:
        request = ScoringRequest(text, tuple(templates))
        check_scoring(request)
        data = await self._call("POST", wire.SCORE, wire.scoring_to_json(request))
        self._stats.scored += 1
        return wire.scores_from_json(data)

    async def _call(self, method: str, path: str, payload: Any = None) -> Any:
        """One round trip within the timeout; the answer's JSON, or the pool's error for it."""
        if self._closed:
            raise PoolClosed("the model client is closed")
        if self._session is None:
            raise RuntimeError("the model client has not started: await client.start() first")
        if self._in_flight >= self.queue_size:
            self._stats.rejected += 1
            raise PoolBusy(f"{self._in_flight} requests are already waiting for the model service")
        self._in_flight += 1
        self._idle.clear()
        try:
            async with asyncio.timeout(self.timeout_s):
                # Leaving this block early (timeout, cancel) closes the connection instead of
                # returning it to the pool: that is what tells Serve the caller has gone.
                async with self._session.request(method, self.endpoint + path, json=payload) as response:
                    body = await response.read()
                    return self._answer(response.status, body)
        except aiohttp.ClientError as exc:
            # First: aiohttp's connect timeout is a ClientError and a TimeoutError too, and a
            # host that does not take the connection is down, not slow.
            self._stats.failed += 1
            raise PoolClosed(f"the model service at {self.endpoint} is unreachable: {exc}") from exc
        except TimeoutError:
            self._stats.timed_out += 1
            raise PoolTimeout(f"no answer from the model service within {self.timeout_s:g} s") from None
        except asyncio.CancelledError:
            self._stats.cancelled += 1
            raise
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    def _answer(self, status: int, body: bytes) -> Any:
        if status == 200:
            return _json(body)
        detail = _detail(body) or f"HTTP {status}"
        if status in (429, 503):  # 429: Serve's queue is full; 503: no replica ready to take it
            self._stats.rejected += 1
            raise PoolBusy(f"the model service is busy: {detail}")
        if status in (408, 504):
            self._stats.timed_out += 1
            raise PoolTimeout(f"the model service timed out: {detail}")
        if status == 400:
            raise InvalidRequest(detail)
        self._stats.failed += 1
        raise GenerationFailed(f"the model service failed (HTTP {status}): {detail}")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise GenerationFailed(f"the model service sent something that is not JSON: {body[:200]!r}") from exc


def _detail(body: bytes) -> str:
    """The service's own words for an error: its JSON `detail`, else Serve's plain text."""
    try:
        data = _json(body)
    except PoolError:
        return body.decode("utf-8", "replace")[:500]
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])
    return str(data)[:500]
