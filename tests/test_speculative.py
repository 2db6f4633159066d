"""Speculative decoding: n-gram guesses checked several characters per pass must change only the
speed, never the captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main
from common.config import load_config
from model.checkpoint import build_model, load_checkpoint
from model.draft import DraftTableError, build_draft_table, load_draft_table
from model.generate import CaptionGenerator, load_generator
from model.requests import GenerationRequest
from model.speculation import SPECULATE_MAX_ROWS
from model.transformer import FrozenStep
from model.vocab import END, PAD, START, Vocab
from tests.conftest import SYNTHETIC_CAPTIONS, write_dataset

VOCAB = Vocab()


def table_from(texts: list[str]):
    return build_draft_table([np.array(VOCAB.encode_boxes([t])) for t in texts], VOCAB.symbols, min_count=1)


@pytest.fixture(scope="module")
def plain(tiny_checkpoint) -> CaptionGenerator:
    return load_generator(tiny_checkpoint)


@pytest.fixture(scope="module")
def guessing(tiny_checkpoint, tmp_path_factory) -> CaptionGenerator:
    # Guesses that are right only part of the time (other captions than the model learned), so
    # both kept and rejected guesses happen.
    path = tmp_path_factory.mktemp("draft") / "draft.npz"
    table_from(["pineapple on pizza is fine", "writing code", "tabs and spaces", "it was aliens"]).save(path)
    generator = load_generator(tiny_checkpoint, draft=path)
    assert generator.draft is not None
    return generator


def requests_to_compare(
    prefixes: tuple[str, ...] = ("", "pineapple on", "writing|"), temperature: float = 1.3, **settings
) -> list[GenerationRequest]:
    reqs = []
    for i, template in enumerate([*SYNTHETIC_CAPTIONS, "Some-Unknown-Template"]):
        for method in ("greedy", "sample"):
            for prefix in prefixes:
                reqs.append(
                    GenerationRequest(
                        template,
                        prefix=prefix,
                        method=method,
                        n_boxes=2,
                        seed=i,
                        temperature=temperature,
                        max_length=50,
                        **settings,
                    )
                )
    return reqs


def test_guessing_gives_exactly_the_captions_of_plain_decoding(plain, guessing):
    for req in requests_to_compare():
        ours = guessing.generate_batch([req])[0].captions[0]
        theirs = plain.generate_batch([req])[0].captions[0]
        assert ours.boxes == theirs.boxes, req
        assert ours.logprob == pytest.approx(theirs.logprob, abs=1e-3)


@pytest.mark.parametrize("method", ["greedy", "sample"])
def test_guessing_in_a_batch_matches_each_request_alone(guessing, method):
    # Within SPECULATE_MAX_ROWS rows, so that the batch guesses too.
    reqs = [r for r in requests_to_compare() if r.method == method][: SPECULATE_MAX_ROWS[method]]
    assert len(reqs) > 1
    together = [r.captions[0].boxes for r in guessing.generate_batch(reqs)]
    alone = [guessing.generate_batch([r])[0].captions[0].boxes for r in reqs]
    assert together == alone


def test_guessing_respects_constraints(plain, guessing):
    # Banned words and the box count are enforced on every kept guess too.
    req = GenerationRequest(
        "Change-My-Mind", method="greedy", n_boxes=1, banned_words=frozenset({"pizza"}), max_length=60
    )
    ours = guessing.generate_batch([req])[0].captions[0]
    assert ours.boxes == plain.generate_batch([req])[0].captions[0].boxes
    assert "pizza" not in ours.boxes[0].split() and len(ours.boxes) == 1


def test_extend_with_partly_kept_guesses_matches_the_full_forward():
    """Two rows check 4 tokens per pass and keep different numbers of them: the hidden
    columns must not leak into later logits, and positions must continue from what was kept."""
    torch.manual_seed(0)
    model = build_model("transformer", {"n_templates": 5, "n_layer": 2, "n_embd": 32, "n_head": 2}).eval()
    step = FrozenStep(model)
    seqs = torch.randint(5, 60, (2, 80))
    seqs[:, 0] = START
    template_ids = torch.tensor([1, 3])
    full = model(template_ids, seqs)  # full[b, t] predicts seqs[b, t + 1]
    prompt = torch.cat([seqs[:1, :4], torch.tensor([[PAD, PAD, START, seqs[1, 1]]])])
    at = [4, 2]  # index in seqs of each row's next input
    keeps = [(3, 0), (1, 2), (0, 0), (2, 3), (3, 1)]  # guesses kept per pass, per row
    with torch.inference_mode():
        _, cache = model.prefill(template_ids, prompt)
        for kept in keeps:
            # Each row's input: its true next token, then 3 guesses of which the first `kept`
            # are the true continuation and the rest are wrong.
            tokens = torch.stack([seqs[b, at[b] : at[b] + 4].clone() for b in range(2)])
            for b in range(2):
                tokens[b, 1 + kept[b] :] = END
            logits, cache = step.extend(tokens, cache)
            for b in range(2):
                for t in range(kept[b] + 1):
                    torch.testing.assert_close(logits[b, t], full[b, at[b] + t], atol=1e-4, rtol=1e-4)
            cache = cache.keep_columns(torch.tensor(kept), 4)
            at = [at[b] + kept[b] + 1 for b in range(2)]
        logits, cache = step(torch.stack([seqs[0, at[0]], seqs[1, at[1]]]), cache)
        torch.testing.assert_close(
            logits, torch.stack([full[0, at[0]], full[1, at[1]]]), atol=1e-4, rtol=1e-4
        )


def test_draft_table_guesses_the_most_frequent_continuation(tmp_path):
    table = table_from(["one does not simply"] * 3 + ["one does not know"])
    guess = table.guess(VOCAB.encode_boxes(["one does not "]), 10)
    assert VOCAB.decode_boxes(guess)[0] == "simply" and guess[-1] == END
    path = tmp_path / "draft.npz"
    table.save(path)
    again = load_draft_table(path, VOCAB.symbols)
    assert again.guess(VOCAB.encode_boxes(["one does"]), 4) == table.guess(
        VOCAB.encode_boxes(["one does"]), 4
    )


def test_draft_table_for_another_vocabulary_is_refused(tmp_path):
    path = tmp_path / "draft.npz"
    table_from(["hello"]).save(path)
    other = list(VOCAB.symbols)
    other[10], other[11] = other[11], other[10]
    with pytest.raises(DraftTableError, match="different vocabulary"):
        load_draft_table(path, other)
    (tmp_path / "junk.npz").write_bytes(b"not a table")
    with pytest.raises(DraftTableError, match="not a readable draft table"):
        load_draft_table(tmp_path / "junk.npz", VOCAB.symbols)


def test_draft_command_builds_a_table_from_the_training_split(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", {"Change-My-Mind": ["lasagna is a soup"]}, copies=30)
    out = tmp_path / "models" / "draft.npz"
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\ncache_dir = "{tmp_path / "cache"}"\n')
    assert main(["--config", str(config), "draft", "--data", str(data), "-o", str(out)]) == 0
    assert "contexts from" in capsys.readouterr().out
    table = load_draft_table(out, VOCAB.symbols)
    assert VOCAB.decode_boxes(table.guess(VOCAB.encode_boxes(["lasagna is"]), 20))[0] == " a soup"


def test_generate_without_the_draft_file_still_captions(tmp_path, tiny_checkpoint, capsys):
    config = tmp_path / "config.toml"
    config.write_text(f'[model]\ndraft = "{tmp_path / "missing.npz"}"\n')
    code = main(
        ["--config", str(config), "generate", "change-my-mind", "--method", "greedy"]
        + ["--checkpoint", str(tiny_checkpoint)]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "pineapple on pizza is a crime" in captured.out.lower()
    assert "without speculation" in captured.err


def test_speculation_can_be_switched_off(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[model]\nspeculative = false\n")
    assert load_config(config).draft_path is None
    assert load_config(None).draft_path == Path(load_config(None).root / "data/models/memebot-draft.npz")


def test_shipped_draft_table_matches_the_shipped_model():
    config = load_config(None)
    vocab = load_checkpoint(config.checkpoint_path).vocab
    assert load_draft_table(config.draft_path, vocab).size > 100_000
