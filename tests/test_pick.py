"""Picking the template from the text: the one-pass scores (model/pick.py), the choice among
the best three, the pool's scoring jobs, `memebot pick` and `memebot generate` picking."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import threading
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from cli.main import main
from common.catalog import load_catalog
from common.config import load_config
from fakes.caption_model import ScriptedCaptions, write_untrained_checkpoint
from model.checkpoint import load_checkpoint
from model.generate import load_generator
from model.pick import score_ids, score_templates, text_ids, text_log_likelihoods
from model.pool import (
    GenerationFailed,
    GeneratorLoader,
    InvalidRequest,
    ModelPool,
    PoolBusy,
    PoolClosed,
    PoolTimeout,
)
from model.requests import (
    Abandoned,
    Caption,
    GenerationRequest,
    GenerationResult,
    ResultCallback,
    TemplateScores,
    choose_template,
    softmax,
)
from model.vocab import SEP, START, Vocab

TEMPLATES = ("Change-My-Mind", "Drake-Hotline-Bling", "Two-Buttons", "Ancient-Aliens", "Success-Kid")
VOCAB = Vocab()


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_checkpoint(tmp_path_factory.mktemp("pick") / "untrained.pt", TEMPLATES)


# ---- the scores ---------------------------------------------------------------------------


def test_text_is_encoded_as_a_prefix_without_what_would_follow_it():
    assert text_ids(VOCAB, "When the TESTS | pass ") == VOCAB.encode_boxes(["when the tests", "pass"])
    assert text_ids(VOCAB, "no thanks |") == VOCAB.encode_boxes(["no thanks", ""])  # a box break is said
    assert text_ids(VOCAB, "") == [] and text_ids(VOCAB, "  |  ") == [] and text_ids(VOCAB, "🙂") == []


def log_likelihood_step_by_step(model: torch.nn.Module, template_id: int, ids: list[int]) -> float:
    """The hand check: the decoding path (prefill <start>, then one step per symbol), one template,
    adding up log P(next symbol) as it goes. Shares no code with the one-pass scoring."""
    with torch.inference_mode():
        logits, state = model.prefill(torch.tensor([template_id]), torch.tensor([[START]]))
        total = 0.0
        for symbol in ids:
            total += float(F.log_softmax(logits[0].float(), dim=-1)[symbol])
            logits, state = model.step(torch.tensor([symbol]), state)
    return total


def test_one_pass_over_every_template_equals_each_template_scored_alone(untrained: Path):
    checkpoint = load_checkpoint(untrained)
    model = checkpoint.build().eval()
    ids = text_ids(VOCAB, "when the tests pass | on the first try")
    assert SEP in ids
    together = score_ids(model, checkpoint, ids)
    assert sorted(together.templates) == sorted(TEMPLATES)
    assert list(together.scores) == sorted(together.scores, reverse=True)
    for name, score in zip(together.templates, together.scores, strict=True):
        template_id = checkpoint.template_id(name)
        alone = text_log_likelihoods(model, torch.tensor([template_id]), ids)
        assert alone.shape == (1,)
        assert float(alone[0]) == pytest.approx(score, abs=1e-4)
        assert log_likelihood_step_by_step(model, template_id, ids) == pytest.approx(score, abs=1e-3)
    # The untrained network still tells its templates apart: the rows really differ.
    assert len({round(s, 4) for s in together.scores}) == len(TEMPLATES)


def test_only_the_templates_asked_for_and_known_are_ranked(untrained: Path):
    checkpoint = load_checkpoint(untrained)
    model = checkpoint.build().eval()
    asked = score_templates(model, checkpoint, "tabs | spaces", ["Two-Buttons", "Not-A-Template", "Doge"])
    assert asked.templates == ("Two-Buttons",)
    everything = score_templates(model, checkpoint, "tabs | spaces")
    assert dict(everything.best(5))["Two-Buttons"] == pytest.approx(asked.scores[0], abs=1e-4)
    assert score_templates(model, checkpoint, "  ") == TemplateScores((), ())
    assert score_templates(model, checkpoint, "tabs", ["Doge"]) == TemplateScores((), ())


def test_a_trained_model_ranks_the_template_its_caption_came_from_first(tiny_checkpoint: Path):
    checkpoint = load_checkpoint(tiny_checkpoint)
    model = checkpoint.build().eval()
    assert score_templates(model, checkpoint, "pineapple on pizza").templates[0] == "Change-My-Mind"
    assert (
        score_templates(model, checkpoint, "writing tests | shipping").templates[0] == "Drake-Hotline-Bling"
    )


# ---- the choice ---------------------------------------------------------------------------


def test_ranking_probabilities_and_best():
    scores = TemplateScores.ranked({"a": -3.0, "b": -1.0, "c": -1.0, "d": -2.0})
    assert scores.templates == ("b", "c", "d", "a")  # ties keep the order they came in
    assert scores.best(2) == [("b", -1.0), ("c", -1.0)]
    probabilities = scores.probabilities()
    assert sum(probabilities) == pytest.approx(1.0)
    assert probabilities[0] == probabilities[1] > probabilities[2] > probabilities[3]
    assert softmax([-1000.0, -1001.0]) == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))])


def test_the_choice_is_among_the_best_three_weighted_by_their_softmax():
    scores = TemplateScores.ranked({"a": 0.0, "b": -1.0, "c": -2.0, "d": -2.5, "e": -10.0})
    rng = random.Random(7)
    draws = 30_000
    counts = Counter(choose_template(scores, rng) for _ in range(draws))
    assert set(counts) == {"a", "b", "c"}  # "d" is close, but fourth
    for name, weight in zip("abc", softmax([0.0, -1.0, -2.0]), strict=True):  # 0.665, 0.245, 0.090
        assert counts[name] / draws == pytest.approx(weight, abs=0.015)
    # Seeded: the same draws again; among=1 always takes the best.
    assert [choose_template(scores, random.Random(3)) for _ in range(5)] == [
        choose_template(scores, random.Random(3)) for _ in range(5)
    ]
    assert {choose_template(scores, rng, among=1) for _ in range(100)} == {"a"}
    assert choose_template(TemplateScores.ranked({"only": -50.0}), rng) == "only"
    with pytest.raises(ValueError, match="no template was scored"):
        choose_template(TemplateScores((), ()), rng)


# ---- through the pool ---------------------------------------------------------------------


@dataclass
class GatedModel:
    """A BatchGenerator that records, in order, the batches and scoring passes it ran; while
    `gate` is unset, a batch whose prefix is "hold" waits, keeping the worker busy."""

    model_id: str = "gated"
    gate: threading.Event = field(default_factory=threading.Event)
    calls: list[object] = field(default_factory=list)  # [prefixes] per batch, or the scored text

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_result: ResultCallback | None = None,
        abandoned: Abandoned | None = None,
    ) -> list[GenerationResult]:
        self.calls.append([r.prefix for r in requests])
        if any(r.prefix == "hold" for r in requests):
            assert self.gate.wait(10), "test forgot to open the gate"
        return [GenerationResult([Caption([r.prefix], -1.0)]) for r in requests]

    def score_templates(self, text: str, templates: Sequence[str] = ()) -> TemplateScores:
        self.calls.append(text)
        if text == "hold":
            assert self.gate.wait(10), "test forgot to open the gate"
        if text == "explode":
            raise RuntimeError("scoring blew up")
        return TemplateScores.ranked({name: -float(i) for i, name in enumerate(templates)})


@contextlib.asynccontextmanager
async def pool_of(model: object, **options: float) -> AsyncIterator[ModelPool]:
    pool = ModelPool([lambda: model], **options)  # type: ignore[list-item, return-value]
    await pool.start(warmup=False)
    try:
        yield pool
    finally:
        if isinstance(model, GatedModel):
            model.gate.set()
        await pool.close()


async def until_called(model: GatedModel, n: int) -> None:
    async with asyncio.timeout(5):
        while len(model.calls) < n:
            await asyncio.sleep(0.001)


@pytest.mark.timeout(30)
async def test_the_pool_scores_with_the_scripted_model_and_closes_cleanly():
    model = ScriptedCaptions(templates=("Drake-Hotline-Bling", "Change-My-Mind", "Two-Buttons"))
    async with pool_of(model) as pool:
        scores = await pool.score_templates("change my mind: tabs")
        assert scores.best(2) == [("Change-My-Mind", 3.0), ("Drake-Hotline-Bling", 0.0)]
        only = await pool.score_templates("two buttons", ["Two-Buttons", "Doge"])
        assert only.templates[0] == "Two-Buttons"
        with pytest.raises(InvalidRequest, match="no words"):
            await pool.score_templates(" | ")
        caption = await pool.generate(GenerationRequest(template="Two-Buttons", prefix="tabs"))
        assert caption.captions[0].boxes[0].startswith("tabs")
        assert pool.stats.scored == 2 and pool.stats.requests == 1
    assert [s.text for s in model.scorings] == ["change my mind: tabs", "two buttons"]
    with pytest.raises(PoolClosed):
        await pool.score_templates("too late")


@pytest.mark.timeout(30)
async def test_a_scoring_pass_runs_in_its_turn_and_never_splits_a_generation_batch():
    model = GatedModel()

    def gen(prefix: str) -> GenerationRequest:
        return GenerationRequest(template="Two-Buttons", prefix=prefix, method="greedy")

    async with pool_of(model, max_batch=8, batch_wait_ms=0) as pool:
        hold = asyncio.create_task(pool.generate(gen("hold")))
        await until_called(model, 1)  # the worker is busy from here on
        # Oldest first: a scoring job at the front of the queue runs before the batch behind it.
        first = asyncio.create_task(pool.score_templates("first", ["A", "B"]))
        await asyncio.sleep(0.01)
        b = asyncio.create_task(pool.generate(gen("b")))
        await asyncio.sleep(0.01)
        # A scoring job behind a waiting request is passed over by that request's batch: "c" and "d"
        # join "b", and the scoring pass runs next.
        second = asyncio.create_task(pool.score_templates("second", ["A", "B"]))
        await asyncio.sleep(0.01)
        rest = [asyncio.create_task(pool.generate(gen(p))) for p in "cd"]
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(hold, first, b, second, *rest)
        assert model.calls == [["hold"], "first", ["b", "c", "d"], "second"]
        assert (await first).templates == ("A", "B")
        assert pool.stats.batches == 2 and pool.stats.scored == 2


@pytest.mark.timeout(30)
async def test_scoring_honours_the_queue_limit_timeout_failures_and_close():
    model = GatedModel()
    async with pool_of(model, queue_size=1, timeout_s=0.3) as pool:
        held = asyncio.create_task(pool.score_templates("hold", ["A"]))
        await until_called(model, 1)
        queued = asyncio.create_task(pool.score_templates("queued", ["A"]))
        await asyncio.sleep(0.01)
        with pytest.raises(PoolBusy):
            await pool.score_templates("one too many", ["A"])
        with pytest.raises(PoolTimeout):
            await queued  # left the queue unanswered
        with pytest.raises(PoolTimeout):
            await held  # its pass cannot be stopped; it finishes for nobody
        model.gate.set()
        # A failing pass fails its caller only; the pool keeps serving.
        with pytest.raises(GenerationFailed, match="scoring failed: RuntimeError: scoring blew up"):
            await pool.score_templates("explode", ["A"])
        assert (await pool.score_templates("fine", ["A", "B"])).templates == ("A", "B")
        assert "queued" not in model.calls
    # Close: the pass being run finishes, a queued scoring job is failed with PoolClosed.
    model = GatedModel()
    pool = ModelPool([lambda: model])  # type: ignore[list-item, return-value]
    await pool.start(warmup=False)
    running = asyncio.create_task(pool.score_templates("hold", ["A"]))
    await until_called(model, 1)
    waiting = asyncio.create_task(pool.score_templates("waiting", ["A"]))
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(pool.close())
    await asyncio.sleep(0.01)
    model.gate.set()
    await closing
    assert (await running).templates == ("A",)
    with pytest.raises(PoolClosed):
        await waiting
    assert model.calls == ["hold"]


@pytest.mark.timeout(60)
async def test_the_real_generator_scores_through_the_pool_as_it_does_alone(untrained: Path):
    pool = ModelPool([GeneratorLoader(untrained, "cpu", threads=1)])
    await pool.start(warmup=True)
    try:
        through_pool = await pool.score_templates("pineapple | on pizza", ["Two-Buttons", "Change-My-Mind"])
        caption = await pool.generate(
            GenerationRequest(template="Two-Buttons", method="greedy", max_length=5)
        )
    finally:
        await pool.close()
    alone = load_generator(untrained).score_templates(
        "pineapple | on pizza", ["Two-Buttons", "Change-My-Mind"]
    )
    assert through_pool.templates == alone.templates
    assert through_pool.scores == pytest.approx(alone.scores, abs=1e-5)
    assert caption.captions


# ---- the command line ---------------------------------------------------------------------


def test_memebot_pick_prints_slugs_first_best_first(tiny_checkpoint: Path, capsys: pytest.CaptureFixture):
    assert main(["pick", "pineapple", "on", "pizza", "--n", "3", "--checkpoint", str(tiny_checkpoint)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    slugs = {t.slug for t in load_catalog(load_config(None).catalog_path).templates}
    rows = [line.split() for line in lines]
    assert [row[0] for row in rows][0] == "change-my-mind"
    assert all(row[0] in slugs and len(row) == 3 and row[2].endswith("%") for row in rows)
    scores = [float(row[1]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert float(rows[0][2].rstrip("%")) > 50

    assert main(["pick", " | ", "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "no words" in capsys.readouterr().err


def test_memebot_generate_names_the_template_it_picked(tiny_checkpoint: Path, capsys: pytest.CaptureFixture):
    base = ["--checkpoint", str(tiny_checkpoint), "--method", "greedy", "--seed", "1"]
    assert main(["generate", "writing tests", *base]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "template: drake-hotline-bling"
    assert lines[1].startswith("writing tests")
    # TEMPLATE and PREFIX together are the text when TEMPLATE is no template.
    assert main(["generate", "pineapple on", "pizza", *base]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "template: change-my-mind" and lines[1].startswith("pineapple on pizza")
    # Recognised from a name: named too. Given by its slug: the caption comes first.
    assert main(["generate", "Change My Mind", *base]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "template: change-my-mind"
    assert main(["generate", "change-my-mind", *base]) == 0
    assert not capsys.readouterr().out.startswith("template:")
    # A set phrase names a template the model has no captions of (and "one" names none).
    assert main(["generate", "one", "does not simply walk into mordor", *base]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "template: one-does-not-simply" and lines[1].startswith("one does not simply walk")
    assert main(["pick", "not", "sure", "if", "trolling", "--checkpoint", str(tiny_checkpoint)]) == 0
    assert "futurama-fry" in capsys.readouterr().err
    # One word near a template's name is a mistyped name, not a caption.
    assert main(["generate", "gru", "world domination", *base]) == 2
    err = capsys.readouterr().err
    assert 'No template "gru"' in err and "grumpy-cat" in err


def test_memebot_generate_applies_the_content_filter(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    """The command line writes what the bot would: a banned word is never completed, and with the
    filter off the model's own caption comes back."""
    base = ["generate", "ancient-aliens", "--checkpoint", str(tiny_checkpoint), "--method", "greedy"]
    assert main(base) == 0
    assert "aliens" in capsys.readouterr().out  # the memorised "i'm not saying it was aliens ..."
    config = tmp_path / "config.toml"
    config.write_text('[filter]\nextra_words = ["aliens"]\n')
    assert main(["--config", str(config), *base]) == 0
    out = capsys.readouterr().out
    assert out.strip() and "aliens" not in out
    config.write_text('[filter]\nenabled = false\nextra_words = ["aliens"]\n')
    assert main(["--config", str(config), *base]) == 0
    assert "aliens" in capsys.readouterr().out
