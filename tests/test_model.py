"""The caption models and their decoders, on a tiny model that memorised synthetic captions."""

from __future__ import annotations

import math

import pytest
import torch

from model.checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint
from model.generate import CaptionGenerator, load_generator, round_weights_to_half
from model.requests import GenerationRequest
from model.transformer import FrozenStep, half_weights_available
from model.vocab import END, PAD, START, Vocab, normalize_user_text
from tests.conftest import SYNTHETIC_CAPTIONS


@pytest.fixture(scope="module")
def generator(tiny_checkpoint) -> CaptionGenerator:
    return load_generator(tiny_checkpoint)


def test_tiny_model_learns_the_captions(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt.metrics["val_subset_accuracy"] > 0.97


def test_greedy_generates_exactly_the_memorised_captions(generator):
    requests = [
        GenerationRequest(template=t, method="greedy", n_boxes=len(b)) for t, b in SYNTHETIC_CAPTIONS.items()
    ]
    results = generator.generate_batch(requests)
    for (template, boxes), result in zip(SYNTHETIC_CAPTIONS.items(), results, strict=True):
        assert result.captions[0].boxes == boxes, template


def test_beam_width_one_equals_greedy(generator):
    for template in SYNTHETIC_CAPTIONS:
        greedy = generator.generate_batch([GenerationRequest(template, method="greedy")])[0].captions[0]
        beam = generator.generate_batch([GenerationRequest(template, method="beam", beam_width=1)])[
            0
        ].captions[0]
        assert beam.boxes == greedy.boxes


def test_beam_search_returns_n_best_and_memorised_caption_first(generator):
    result = generator.generate_batch(
        [GenerationRequest("Change-My-Mind", method="beam", beam_width=3, n=3)]
    )[0]
    assert len(result.captions) == 3
    assert result.captions[0].boxes == ["pineapple on pizza is a crime"]


def test_beam_requests_batched_together_each_get_what_they_get_alone(generator):
    # Different templates, widths and length caps end at different steps: the ones that end
    # first leave the batch while the others go on, and nobody's beams may get mixed up.
    requests = [
        GenerationRequest(template, method="beam", beam_width=width, n=min(2, width), max_length=cap)
        for template, width, cap in [
            ("Two-Buttons", 3, 150),
            ("Ancient-Aliens", 2, 150),
            ("Change-My-Mind", 4, 12),
            ("Drake-Hotline-Bling", 1, 150),
            ("Not-A-Template", 3, 40),
            ("Change-My-Mind", 3, 150),
        ]
    ]
    batched = generator.generate_batch(requests)
    for request, result in zip(requests, batched, strict=True):
        alone = generator.generate_batch([request])[0]
        assert [c.boxes for c in result.captions] == [c.boxes for c in alone.captions], request
        assert [c.logprob for c in result.captions] == pytest.approx(
            [c.logprob for c in alone.captions], abs=1e-3
        )
    assert batched[5].captions[0].boxes == ["pineapple on pizza is a crime"]
    assert len(" ".join(batched[2].captions[0].boxes)) <= 12


@pytest.mark.parametrize("method", ["greedy", "sample", "beam"])
def test_each_request_is_reported_as_soon_as_it_is_done(generator, method):
    # Index 0 runs to the end of its 41-symbol caption, index 1 stops after 4 symbols.
    requests = [
        GenerationRequest("Ancient-Aliens", method=method, seed=1, temperature=0.1),
        GenerationRequest("Ancient-Aliens", method=method, seed=2, temperature=0.1, max_length=4),
        GenerationRequest("Two-Buttons", method="sample" if method == "beam" else "beam", seed=3),
    ]
    reported: list[tuple[int, object]] = []
    results = generator.generate_batch(requests, on_result=lambda i, r: reported.append((i, r)))
    order = [i for i, _ in reported]
    assert sorted(order) == [0, 1, 2]  # each exactly once
    assert order.index(1) < order.index(0)  # the short one did not wait for the long one
    assert dict(reported) == dict(enumerate(results))
    assert results[0].captions[0].boxes == ["i'm not saying it was aliens", "but it was aliens"]


@pytest.mark.parametrize("method", ["greedy", "sample", "beam"])
def test_an_abandoned_request_leaves_its_batch_and_the_others_are_unchanged(generator, method):
    # Index 1's caller gives up after the decoder has asked about it three times: from then on
    # it must not be decoded (nor asked about), and its neighbours must get what they get alone.
    requests = [
        GenerationRequest("Ancient-Aliens", method=method, seed=1, temperature=0.8, n=2, beam_width=2),
        GenerationRequest("Two-Buttons", method=method, seed=2, temperature=0.8),
        GenerationRequest("Change-My-Mind", method=method, seed=3, temperature=0.8, beam_width=3),
    ]
    asked: list[int] = []

    def abandoned(i: int) -> bool:
        asked.append(i)
        return i == 1 and asked.count(1) > 3

    reported: list[int] = []
    results = generator.generate_batch(
        requests, on_result=lambda i, _: reported.append(i), abandoned=abandoned
    )
    assert asked.count(1) == 4  # asked until it said yes, never again
    assert results[1].captions == [] and 1 not in reported
    assert sorted(reported) == [0, 2]
    for i in (0, 2):
        alone = generator.generate_batch([requests[i]])[0]
        assert [c.boxes for c in results[i].captions] == [c.boxes for c in alone.captions], i
    assert results[0].captions[0].boxes == ["i'm not saying it was aliens", "but it was aliens"]


@pytest.mark.parametrize("method", ["greedy", "sample", "beam"])
@pytest.mark.parametrize("prefix", ["", "Pineapple ON", "zzz qqq", "a|b|c|d|e", "écrit ✨ 日本"])
def test_prefix_is_always_preserved(generator, method, prefix):
    req = GenerationRequest("Change-My-Mind", prefix=prefix, method=method, n_boxes=2, max_length=40, seed=3)
    caption = generator.generate_batch([req])[0].captions[0]
    expected = [b.strip() for b in normalize_user_text(prefix)] if prefix else [""]
    expected = expected[:1] + [" ".join(b for b in expected[1:] if b)] if len(expected) > 2 else expected
    for want, got in zip(expected, caption.boxes, strict=False):
        assert got.startswith(want), (prefix, caption.boxes)
    assert len(caption.boxes) == 2


def test_end_stops_generation_and_box_split_matches_template(generator):
    result = generator.generate_batch(
        [GenerationRequest("Two-Buttons", method="greedy", n_boxes=3, max_length=150)]
    )[0]
    assert result.captions[0].boxes == ["tabs", "spaces", "me"]  # stopped at <end>, not at the cap
    # Asked for two boxes, the decoder may not open a third.
    result = generator.generate_batch([GenerationRequest("Two-Buttons", method="greedy", n_boxes=2)])[0]
    assert len(result.captions[0].boxes) == 2


def test_length_cap_is_respected(generator):
    caption = generator.generate_batch([GenerationRequest("Change-My-Mind", method="greedy", max_length=5)])[
        0
    ].captions[0]
    assert len(" ".join(caption.boxes)) <= 5


def test_seeded_sampling_is_the_same_alone_and_in_a_batch(generator):
    target = GenerationRequest("Ancient-Aliens", method="sample", temperature=1.5, seed=42, n=2)
    alone = generator.generate_batch([target])[0]
    others = [
        GenerationRequest(t, method=m, seed=7)
        for t in SYNTHETIC_CAPTIONS
        for m in ("sample", "beam", "greedy")
    ]
    batched = generator.generate_batch([*others[:5], target, *others[5:]])[5]
    assert [c.boxes for c in alone.captions] == [c.boxes for c in batched.captions]


def test_banned_words_are_never_completed(generator):
    banned = ("pizza", "crime")
    for seed in range(5):
        req = GenerationRequest(
            "Change-My-Mind", method="sample", seed=seed, banned_words=banned, temperature=0.5
        )
        words = " ".join(generator.generate_batch([req])[0].captions[0].boxes).replace(",", " ").split()
        assert not set(words) & set(banned)


def test_unknown_template_still_captions(generator):
    caption = generator.generate_batch([GenerationRequest("Not-A-Template", method="greedy")])[0].captions[0]
    assert "".join(caption.boxes).strip()


def test_checkpoint_round_trip_gives_identical_logits(tiny_checkpoint, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint)
    save_checkpoint(ckpt, tmp_path / "copy.pt")
    again = load_checkpoint(tmp_path / "copy.pt")
    tokens = torch.tensor([[START, 10, 20, 30]])
    a = ckpt.build().eval()(torch.tensor([1]), tokens)
    b = again.build().eval()(torch.tensor([1]), tokens)
    assert torch.equal(a, b)
    assert again.model_id == ckpt.model_id


def test_int8_storage_halves_the_file_and_keeps_the_captions(tiny_checkpoint, tmp_path):
    """Matrices stored as int8 with a scale per row: half the fp16 file, the same network within
    rounding, the same memorised captions, and a run can start from it."""
    ckpt = load_checkpoint(tiny_checkpoint)
    save_checkpoint(ckpt.with_half_storage(), tmp_path / "half.pt")
    save_checkpoint(ckpt.with_int8_storage(), tmp_path / "int8.pt")
    half, int8 = (tmp_path / "half.pt").stat().st_size, (tmp_path / "int8.pt").stat().st_size
    params = sum(v.numel() for v in ckpt.state_dict.values())
    assert int8 < half - 0.8 * params  # a byte per weight saved, less the scales and the framing
    again = load_checkpoint(tmp_path / "int8.pt")
    for name, value in again.weights().items():
        original = ckpt.state_dict[name].float()
        assert value.shape == original.shape
        assert (value.float() - original).abs().max() <= original.abs().max() / 127 + 1e-6, name
    tokens = torch.tensor([[START, 10, 20, 30]])
    a = ckpt.build().eval()(torch.tensor([1]), tokens)
    b = again.build().eval()(torch.tensor([1]), tokens)
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    requests = [GenerationRequest(t, method="greedy") for t in ("Drake-Hotline-Bling", "Change-My-Mind")]
    served = [r.captions[0].boxes for r in load_generator(tiny_checkpoint).generate_batch(requests)]
    assert [
        r.captions[0].boxes for r in load_generator(tmp_path / "int8.pt").generate_batch(requests)
    ] == served
    build_model(again.arch, again.model_config).load_state_dict(again.weights())  # what init_from does


def test_checkpoint_mismatches_are_clear_errors(tiny_checkpoint, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt.vocab = list(reversed(ckpt.vocab))
    save_checkpoint(ckpt, tmp_path / "bad-vocab.pt")
    with pytest.raises(CheckpointError, match="vocabulary"):
        load_checkpoint(tmp_path / "bad-vocab.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("arch", ["transformer", "lstm", "cnn"])
def test_incremental_decoding_matches_full_forward(arch):
    torch.manual_seed(0)
    small = {
        "transformer": {"n_layer": 2, "n_embd": 32, "n_head": 2},
        "lstm": {"hidden": 64},
        "cnn": {"channels": 32},
    }[arch]
    model = build_model(arch, {"n_templates": 5, **small}).eval()
    tokens = torch.tensor([[START, 10, 11, 12, 13, 14, 15], [START, 20, 21, 22, 23, 24, 25]])
    template_ids = torch.tensor([1, 3])
    full = model(template_ids, tokens)
    # Rows of different prompt lengths, left-padded as the decoder batches them.
    prompt = torch.tensor([[START, 10, 11, 12], [PAD, PAD, START, 20]])
    logits, state = model.prefill(template_ids, prompt)
    torch.testing.assert_close(logits, torch.stack([full[0, 3], full[1, 1]]), atol=1e-5, rtol=1e-4)
    for t in range(2):
        logits, state = model.step(torch.stack([tokens[0, 4 + t], tokens[1, 2 + t]]), state)
        torch.testing.assert_close(
            logits, torch.stack([full[0, 4 + t], full[1, 2 + t]]), atol=1e-5, rtol=1e-4
        )


def test_serving_step_matches_full_forward_through_cache_growth_and_row_selection():
    """The generator decodes with FrozenStep, not model.step: same logits, padded rows included,
    past the cache's first 64 free columns and after rows are reordered (beam search)."""
    torch.manual_seed(0)
    model = build_model("transformer", {"n_templates": 5, "n_layer": 2, "n_embd": 32, "n_head": 2}).eval()
    assert FrozenStep.supports(model)
    step = FrozenStep(model)
    tokens = torch.randint(5, 60, (2, 100))
    tokens[:, 0] = START
    template_ids = torch.tensor([1, 3])
    full = model(template_ids, tokens)
    # Row 0 has a 4-token prompt, row 1 a 2-token prompt left-padded to 4.
    prompt = torch.cat([tokens[:1, :4], torch.tensor([[PAD, PAD, START, tokens[1, 1]]])])
    at = [4, 2]  # the position each row's next input token comes from
    with torch.inference_mode():
        logits, cache = model.prefill(template_ids, prompt)
        for t in range(90):
            if t == 70:  # the beams trade places
                cache = cache.select(torch.tensor([1, 0]))
                tokens, full, at = tokens.flip(0), full.flip(0), at[::-1]
            logits, cache = step(torch.stack([tokens[0, at[0]], tokens[1, at[1]]]), cache)
            torch.testing.assert_close(
                logits, torch.stack([full[0, at[0]], full[1, at[1]]]), atol=1e-4, rtol=1e-4
            )
            at = [at[0] + 1, at[1] + 1]


@pytest.mark.skipif(not half_weights_available(), reason="FBGEMM fp16 kernels need an x86 CPU with AVX2")
def test_half_weights_serve_what_eval_half_weights_scores(tiny_checkpoint):
    """Served with fp16 weights, the step's logits are those of the model with its weights rounded
    to fp16 (what `memebot eval --half-weights` scores), and the memorised captions still come out."""
    ckpt = load_checkpoint(tiny_checkpoint)
    model = ckpt.build().eval()
    step = FrozenStep(model, half_weights=True)
    assert step.half_weights
    tokens = torch.tensor([[START, 5, 9, 14, 20, 7]])
    template_ids = torch.tensor([2])
    rounded = ckpt.build().eval()
    round_weights_to_half(rounded)
    full = rounded(template_ids, tokens)
    exact = model(template_ids, tokens)
    assert (full - exact).abs().max() > 1e-4  # the rounding is real
    with torch.inference_mode():
        logits, cache = rounded.prefill(template_ids, tokens[:, :2])
        logits, cache = step.extend(tokens[:, 2:], cache)
    torch.testing.assert_close(logits[0], full[0, 2:], atol=2e-5, rtol=1e-5)
    generator = load_generator(tiny_checkpoint, half_weights=True)
    for template, boxes in SYNTHETIC_CAPTIONS.items():
        req = GenerationRequest(template, method="greedy", n_boxes=len(boxes))
        assert generator.generate_batch([req])[0].captions[0].boxes == boxes


def test_int8_model_keeps_the_module_step(tiny_checkpoint):
    generator = load_generator(tiny_checkpoint, quantize=True)
    assert not isinstance(generator._step, FrozenStep)
    greedy = generator.generate_batch([GenerationRequest("Ancient-Aliens", method="greedy")])[0]
    assert greedy.captions[0].boxes == SYNTHETIC_CAPTIONS["Ancient-Aliens"]


def test_cnn_sees_at_least_128_characters():
    model = build_model("cnn", {})
    assert model.config.receptive_field >= 128


def test_vocabulary_is_the_seeds_72_symbols():
    vocab = Vocab()
    assert len(vocab) == 72
    assert vocab.symbols[END] == "<end>" and ";" not in vocab.symbols and " " in vocab.symbols
    assert sum(1 for s in vocab.symbols if len(s) == 1) == 68
    assert math.isclose(len(vocab), 72)
