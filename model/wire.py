"""The model service's wire format: requests, results, scores and stats as JSON-ready dicts.

One module for both ends, so the serving deployment (model/serve.py) and its client
(model/remote.py) cannot drift apart. Plain data in, plain data out: no Ray, no aiohttp, no torch.
A request from the network is checked field by field here (types) and by the pool's own
`check_request` (ranges) before it can reach a batch, so one bad caller never fails the others.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections import Counter
from typing import Any

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
    if not isinstance(data, dict):
        raise InvalidRequest(f"a generation request is a JSON object, got {type(data).__name__}")
    fields = _request_fields()
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidRequest(f"unknown request fields: {', '.join(unknown)}")
    if "template" not in data:
        raise InvalidRequest("a generation request needs a template")
    return GenerationRequest(**{name: _checked(name, value, fields[name]) for name, value in data.items()})


def result_to_json(result: GenerationResult) -> dict[str, Any]:
    return {"captions": [dataclasses.asdict(c) for c in result.captions]}


def result_from_json(data: dict[str, Any]) -> GenerationResult:
    return GenerationResult(
        [Caption(list(c["boxes"]), float(c["logprob"]), c.get("score")) for c in data["captions"]]
    )


def scoring_to_json(request: ScoringRequest) -> dict[str, Any]:
    return {"text": request.text, "templates": list(request.templates)}


def scoring_from_json(data: Any) -> ScoringRequest:
    if not isinstance(data, dict) or set(data) - {"text", "templates"}:
        raise InvalidRequest('a scoring request is {"text": ..., "templates": [...]}')
    text, templates = data.get("text"), data.get("templates", [])
    if not isinstance(text, str):
        raise InvalidRequest("text must be a string")
    if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
        raise InvalidRequest("templates must be a list of strings")
    return ScoringRequest(text, tuple(templates))


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


@functools.cache
def _request_fields() -> dict[str, Any]:
    """Field name -> its resolved type (requests.py's annotations are strings)."""
    hints = typing.get_type_hints(GenerationRequest)
    return {f.name: hints[f.name] for f in dataclasses.fields(GenerationRequest)}


def _checked(name: str, value: Any, annotation: Any) -> Any:
    """The value as the field's type (a JSON list becomes a tuple); InvalidRequest if it is not one."""
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    if optional and value is None:
        return None
    kind = next(a for a in typing.get_args(annotation) if a is not type(None)) if optional else annotation
    if typing.get_origin(kind) is tuple:
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, kind):
        return value
    raise InvalidRequest(f"{name} must be {_describe(annotation)}, got {value!r}")


def _describe(annotation: Any) -> str:
    names = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    parts = [
        "a list of strings" if typing.get_origin(a) is tuple else names.get(a, "null")
        for a in (typing.get_args(annotation) if optional else (annotation,))
    ]
    return " or ".join(parts)
