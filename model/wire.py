"""The model service's wire format: requests, results, scores and stats as JSON-ready dicts.

One module for both ends, so the serving deployment (model/serve.py) and its client
(model/remote.py) cannot drift apart. Plain data in, plain data out: no Ray, no aiohttp, no torch.
A request from the network is checked field by field here (types) and by the pool's own
`check_request` (ranges) before it can reach a batch, so one bad caller never fails the others.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections import Counter
from typing import Any, TypeVar

from common.config import coerce
from model.pool import InvalidRequest, PoolStats
from model.requests import Caption, GenerationRequest, GenerationResult, ScoringRequest, TemplateScores

# The routes of the service (HTTP, JSON bodies). GET: info, stats; POST: generate, score.
GENERATE = "/generate"
SCORE = "/score"
INFO = "/info"
STATS = "/stats"


def request_to_json(request: GenerationRequest) -> dict[str, Any]:
    return dataclasses.asdict(request)


def request_from_json(data: Any) -> GenerationRequest:
    """InvalidRequest for anything that is not a GenerationRequest's fields with their types."""
    return _from_json(GenerationRequest, data)


def result_to_json(result: GenerationResult) -> dict[str, Any]:
    return {"captions": [dataclasses.asdict(c) for c in result.captions]}


def result_from_json(data: dict[str, Any]) -> GenerationResult:
    return GenerationResult(
        [Caption(list(c["boxes"]), float(c["logprob"]), c.get("score")) for c in data["captions"]]
    )


def scoring_to_json(request: ScoringRequest) -> dict[str, Any]:
    return {"text": request.text, "templates": list(request.templates)}


def scoring_from_json(data: Any) -> ScoringRequest:
    return _from_json(ScoringRequest, data)


def scores_to_json(scores: TemplateScores) -> dict[str, Any]:
    return {"templates": list(scores.templates), "scores": list(scores.scores)}


def scores_from_json(data: dict[str, Any]) -> TemplateScores:
    return TemplateScores(tuple(data["templates"]), tuple(float(s) for s in data["scores"]))


def stats_to_json(stats: PoolStats) -> dict[str, Any]:
    # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, counting the pairs.
    data = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
    # JSON object keys are strings: the batch size histograms' keys go over the wire as text.
    for name in ("batch_sizes", "batch_rows"):
        data[name] = {str(k): v for k, v in data[name].items()}
    return data


def stats_from_json(data: dict[str, Any]) -> PoolStats:
    known = {f.name for f in dataclasses.fields(PoolStats)}
    values = {k: v for k, v in data.items() if k in known}  # a newer server may report more
    for name in ("batch_sizes", "batch_rows"):
        values[name] = Counter({int(k): int(v) for k, v in values.get(name, {}).items()})
    return PoolStats(**values)


def error_to_json(error: Exception) -> dict[str, Any]:
    return {"error": type(error).__name__, "detail": str(error)}


# ---- checking a request's fields ---------------------------------------------------------

_Request = TypeVar("_Request", GenerationRequest, ScoringRequest)


def _from_json(cls: type[_Request], data: Any) -> _Request:
    """A request dataclass from a JSON object: every field known, the required ones there, each
    of its type (common/config.py's `coerce`, as the config file is read); InvalidRequest
    otherwise."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"a {cls.__name__} is a JSON object, got {type(data).__name__}")
    fields = _fields(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidRequest(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and _required(f)]
    if missing:
        raise InvalidRequest(f"a {cls.__name__} needs {', '.join(missing)}")
    return cls(**{name: coerce(value, fields[name], name, InvalidRequest) for name, value in data.items()})


@functools.cache
def _fields(cls: type) -> dict[str, Any]:
    """Field name -> its resolved type (requests.py's annotations are strings)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
