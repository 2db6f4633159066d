"""A scripted caption model and a real MemeService around it, for front-end tests.

`ScriptedCaptions` is a test double of our own `BatchGenerator` protocol (model/pool.py):
it continues the user's prefix with a fixed ending, so tests can assert on the text, and
it records every request, so tests can see which settings reached the model. It picks
templates from a text by the words the text shares with each template's name. Everything
else is real: the catalog, the renderer, SQLite storage and the ModelPool.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from bot.app import open_service
from bot.service import MemeService
from common.config import Config, LimitsConfig, ModelConfig, PathsConfig, StorageConfig
from model.pool import WARMUP_REQUEST, ModelPool
from model.requests import (
    Abandoned,
    Caption,
    GenerationRequest,
    GenerationResult,
    ResultCallback,
    ScoringRequest,
    TemplateScores,
)
from model.vocab import normalize_user_text

FIXED_ENDING = "with extra cheese"  # what greedy and beam requests always end with


class ScriptedCaptions:
    """Greedy/beam: prefix + FIXED_ENDING. Sampling: prefix + "take N", N counting up, so a
    reroll visibly differs. Boxes the prefix does not reach say "box 2", "box 3", ...
    Scoring templates: each template's score is the number of the text's words that are words
    of its dataset name ("drake tests" scores Drake-Hotline-Bling 1.0); `templates` are the
    ones it knows, for a caller that asks for all of them."""

    model_id = "scripted-captions"

    def __init__(
        self,
        delay_s: float = 0.0,
        fail: bool = False,
        sample_endings: Sequence[str] = (),
        templates: Sequence[str] = (),
        best_of: bool = False,
    ) -> None:
        self.delay_s = delay_s  # simulated decoding time (time.sleep releases the GIL, like torch)
        # True: a sampled request gets all its best-of-N candidates ("take N" each), as the real
        # model returns them; False: one caption, which keeps other tests' numbering simple.
        self.best_of = best_of
        self.fail = fail
        self.sample_endings = list(sample_endings)  # sampled endings to use, in order, before "take N"
        self.requests: list[GenerationRequest] = []
        self.templates = tuple(templates)
        self.scorings: list[ScoringRequest] = []  # every score_templates call, in order
        self._draws = itertools.count(1)
        self._lock = threading.Lock()

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_result: ResultCallback | None = None,
        abandoned: Abandoned | None = None,
    ) -> list[GenerationResult]:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("scripted model failure")
        with self._lock:
            # The pool's warm-up request is answered without being recorded.
            return [
                GenerationResult([Caption([""], 0.0)]) if r is WARMUP_REQUEST else self.answer(r)
                for r in requests
            ]

    def answer(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        several = self.best_of and request.method == "sample"
        count = max(1, request.n, request.best_of) if several else 1
        return GenerationResult([Caption(self._caption(request), -1.0 - k) for k in range(count)])

    def _caption(self, request: GenerationRequest) -> list[str]:
        boxes = normalize_user_text(request.prefix) if request.prefix.strip() else [""]
        if request.method != "sample":
            ending = FIXED_ENDING
        elif self.sample_endings:
            ending = self.sample_endings.pop(0)
        else:
            ending = f"take {next(self._draws)}"
        boxes[-1] = f"{boxes[-1].rstrip()} {ending}".strip()
        while len(boxes) < request.n_boxes:
            boxes.append(f"box {len(boxes) + 1}")
        return boxes

    def score_templates(self, text: str, templates: Sequence[str] = ()) -> TemplateScores:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("scripted model failure")
        with self._lock:
            self.scorings.append(ScoringRequest(text, tuple(templates)))
        words = set(re.findall(r"[a-z0-9']+", " ".join(normalize_user_text(text))))
        names = templates or self.templates
        return TemplateScores.ranked(
            {name: float(len(words & set(name.lower().split("-")))) for name in names}
        )

    @property
    def last(self) -> GenerationRequest:
        return self.requests[-1]


def config_for_tests(tmp_path: Path, **limits: float) -> Config:
    """The default config with the database, the output folder and the (absent) model
    checkpoint in `tmp_path`, so no test depends on a model installed in the checkout."""
    return Config(
        paths=PathsConfig(output_dir=tmp_path / "memes"),
        model=ModelConfig(checkpoint=tmp_path / "no-model.pt"),
        storage=StorageConfig(database=tmp_path / "memebot.db", user_hash_key="test-key"),
        limits=LimitsConfig(**limits),
    )


@asynccontextmanager
async def scripted_service(
    config: Config, model: ScriptedCaptions | None = None, **pool_options: float
) -> AsyncIterator[MemeService]:
    """A real MemeService (built like `memebot run` builds it) on a pool of `model`;
    model=None gives a service without a model, as before `memebot train`."""
    if model is None:
        async with open_service(config, notice=lambda text: None) as service:
            yield service
        return
    pool = ModelPool([lambda: model], **pool_options)
    await pool.start(warmup=False)
    try:
        async with open_service(config, pool=pool) as service:
            yield service
    finally:
        await pool.close()


def write_untrained_checkpoint(
    path: Path, templates: Sequence[str] = ("Change-My-Mind", "Drake-Hotline-Bling")
) -> Path:
    """A real but untrained (random-weight) 1-layer transformer checkpoint, made in a second.

    For tests of the plumbing around the real model (`memebot run`, `memebot chat` loading
    it, decoding through the pool): its captions are gibberish but real decoded output.
    tests/conftest.py's `tiny_checkpoint` has meaningful captions but takes a training run.
    """
    import torch

    from model.checkpoint import build_model, from_model, save_checkpoint
    from model.vocab import Vocab

    torch.manual_seed(0)
    network = build_model(
        "transformer", {"n_layer": 1, "n_head": 2, "n_embd": 32, "n_templates": len(templates) + 1}
    )
    save_checkpoint(from_model(network, vocab=list(Vocab().symbols), templates=list(templates)), path)
    return path
