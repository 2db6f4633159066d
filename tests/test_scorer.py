"""The best-of-N reranker: features, its file, fitting, and best of N ranking with it."""

from __future__ import annotations

import dataclasses
import logging
import zlib

import numpy as np
import pytest
import torch

from cli.main import main
from model.checkpoint import load_checkpoint
from model.generate import CaptionGenerator, load_generator
from model.pool import InvalidRequest, check_request
from model.requests import GenerationRequest
from model.scorer import CaptionScorer, ScorerError, caption_text, features
from tests.conftest import SYNTHETIC_CAPTIONS
from training.scorer import fit_scorer, read_candidates

BUCKETS = 1 << 12


def test_a_caption_is_read_as_the_readers_see_it():
    assert (
        caption_text(["Writing TESTS ", " shipping on friday", "", ""])
        == "writing tests | shipping on friday"
    )
    assert caption_text(["", "only the bottom"]) == " | only the bottom"
    assert caption_text([]) == ""


def test_features_are_the_same_in_any_run_and_differ_with_the_words():
    a = features("one does not simply | write tests", "One-Does-Not-Simply", BUCKETS)
    assert a == features(
        "one does not simply | write tests", "One-Does-Not-Simply", BUCKETS
    )  # CRC-32, not hash()
    assert a == sorted(set(a)) and all(0 <= i < BUCKETS for i in a)
    assert a != features("one does not simply | ship it", "One-Does-Not-Simply", BUCKETS)
    # The same words on another template differ in the template-word features only.
    b = features("one does not simply | write tests", "Drake-Hotline-Bling", BUCKETS)
    assert a != b and len(set(a) & set(b)) > len(a) // 2


def scorer_liking(word: str, buckets: int = BUCKETS) -> CaptionScorer:
    """A scorer for which every caption with `word` in it reads as a person's, and nothing else does."""
    weights = torch.zeros(buckets)
    weights[zlib.crc32(f"w{word}".encode()) % buckets] = 5.0  # the word feature's bucket
    return CaptionScorer(weights, -1.0)


def test_a_scorer_file_round_trips_and_a_damaged_one_is_refused(tmp_path):
    scorer = scorer_liking("aliens")
    path = tmp_path / "scorer.npz"
    scorer.save(path)
    again = CaptionScorer.load(path)
    for boxes in (["i'm not saying it was aliens"], ["writing tests"], []):
        assert again.score("Ancient-Aliens", boxes) == pytest.approx(
            scorer.score("Ancient-Aliens", boxes), abs=1e-3
        )
    assert again.score("x", ["it was aliens"]) == pytest.approx(4.0, abs=1e-3)
    assert again.score("x", ["it was dogs"]) == pytest.approx(-1.0, abs=1e-3)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a scorer at all")
    with pytest.raises(ScorerError, match="not a caption scorer"):
        CaptionScorer.load(broken)


def test_a_damaged_scorer_file_leaves_best_of_n_ranking_by_likelihood(tmp_path, tiny_checkpoint, caplog):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 damaged")
    with caplog.at_level(logging.WARNING):
        generator = load_generator(tiny_checkpoint, scorer=broken)
    assert generator.scorer is None
    assert "without the reranker" in caplog.text
    req = GenerationRequest(
        "Ancient-Aliens", method="sample", seed=1, best_of=4, rerank_weight=2.0, n_boxes=2
    )
    assert generator.generate_batch([req])[0].captions  # still answers


def test_fitting_learns_what_tells_people_from_the_model():
    rng = np.random.default_rng(0)
    nouns = ["cat", "dog", "pizza", "monday", "taxes", "my boss", "the printer", "wifi"]
    people = [
        ("Drake-Hotline-Bling", [f"when {n} is late", f"{rng.choice(nouns)} again"]) for n in nouns * 30
    ]
    model = [("Drake-Hotline-Bling", ["when you are the only one", "the only one"]) for _ in range(240)]
    scorer, report = fit_scorer(people, model, buckets=BUCKETS, epochs=3)
    assert report.held_out_accuracy > 0.95
    assert report.pick_person_rate > 0.95
    assert scorer.score("Drake-Hotline-Bling", ["when taxes is late", "wifi again"]) > 0
    assert scorer.score("Drake-Hotline-Bling", ["when you are the only one", "the only one"]) < 0


def test_best_of_n_adds_the_weighted_reranker_score(tiny_checkpoint):
    """The served candidate is the one with the best log-probability score plus weight times the
    reranker's; weight 0 ranks as before, and a strong liking changes which caption is served."""
    plain = CaptionGenerator(load_checkpoint(tiny_checkpoint))
    scorer = scorer_liking("aliens")
    reranking = CaptionGenerator(load_checkpoint(tiny_checkpoint), scorer=scorer)
    changed = 0
    for seed in range(6):
        req = GenerationRequest(
            "Ancient-Aliens", method="sample", temperature=2.0, seed=seed, n_boxes=2, best_of=8
        )
        before = plain.generate_batch([req])[0].captions
        off = reranking.generate_batch([req])[0].captions  # rerank_weight 0: the scorer is not asked
        assert [c.boxes for c in off] == [c.boxes for c in before]
        weighted = dataclasses.replace(req, rerank_weight=1.5)
        after = reranking.generate_batch([weighted])[0].captions
        assert sorted(map(tuple, (c.boxes for c in after))) == sorted(map(tuple, (c.boxes for c in before)))
        expected = {tuple(c.boxes): c.score + 1.5 * scorer.score("Ancient-Aliens", c.boxes) for c in before}
        assert [c.score for c in after] == pytest.approx([expected[tuple(c.boxes)] for c in after])
        assert [c.score for c in after] == sorted((c.score for c in after), reverse=True)
        if [c.boxes for c in after] != [c.boxes for c in before]:
            changed += 1
            assert "aliens" in caption_text(after[0].boxes)
    assert changed >= 1


def test_the_rerank_weight_is_checked():
    req = GenerationRequest("x", method="sample", best_of=8, rerank_weight=1.0)
    check_request(req)
    for bad in (-0.5, 11.0):
        with pytest.raises(InvalidRequest, match="rerank_weight"):
            check_request(dataclasses.replace(req, rerank_weight=bad))


def test_scorer_command_end_to_end(tmp_path, tiny_checkpoint, synthetic_dataset, capsys):
    config = tmp_path / "config.toml"
    config.write_text(
        f'[paths]\ncache_dir = "{tmp_path / "cache"}"\n'
        f'[model]\ncheckpoint = "{tiny_checkpoint}"\ndevice = "cpu"\nfused_kernel = false\nspeculative = false\n'
        f'scorer = "{tmp_path / "scorer.npz"}"\n'
        "[generation]\nbest_of = 4\ntemperature = 1.5\n"
    )
    candidates = tmp_path / "candidates.jsonl"
    args = ["--config", str(config), "scorer", "--data", str(synthetic_dataset), "--requests", "12"]
    assert main([*args, "--people", "40", "--candidates", str(candidates)]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and str(tmp_path / "scorer.npz") in out
    rows = read_candidates(candidates)
    assert len({(r.template, r.prefix) for r in rows}) <= 12 and len(rows) >= 12
    assert all(r.template in SYNTHETIC_CAPTIONS and r.boxes for r in rows)
    assert CaptionScorer.load(tmp_path / "scorer.npz").buckets == 1 << 18
    # A second run reads the kept candidates instead of generating them again.
    assert main([*args, "--people", "40", "--candidates", str(candidates)]) == 0
    assert "read from" in capsys.readouterr().err
