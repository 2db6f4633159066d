"""The dataset loader keeps and drops exactly the seed's memes, splits stably, and caches."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from model.vocab import SEP, Vocab
from training.dataset import (
    DROP_BAD_CHARS,
    DROP_MALFORMED,
    DROP_NO_BOXES,
    DROP_TOO_LONG,
    DROP_UNREADABLE,
    load_dataset,
)
from training.evaluate import evaluate


def _meme(url: str, boxes, votes: str = "1,234", views: str = "10,000") -> dict:
    return {
        "url": url,
        "post": url,
        "metadata": {"views": views, "img-votes": votes, "title": "t", "author": "a"},
        "boxes": boxes,
    }


@pytest.fixture()
def messy_dataset(tmp_path: Path) -> Path:
    memes = tmp_path / "memes"
    memes.mkdir()
    good = [
        _meme("u1", ["Hello World  ", " second BOX"]),  # kept: lowercased and stripped
        _meme("u2", ["one box only"]),
        _meme("u3", ["", "empty first box"]),  # an empty box is still a box
        _meme("u4", ["x" * 99, "y" * 99]),  # 99 + 1 + 99 = 199 symbols: kept
    ]
    bad = [
        _meme("b1", []),  # no boxes
        _meme("b2", ["café au lait"]),  # non-ASCII
        _meme("b3", ["semi; colon"]),  # ';' is not among the 68
        _meme("b4", ["tab\there"]),  # only the space counts as whitespace
        _meme("b5", ["x" * 100, "y" * 99]),  # 200 symbols: dropped
        {"url": "b6", "boxes": "not a list"},
        {"url": "b7"},
        "not even an object",
        _meme("b8", ["ok", 42]),
    ]
    (memes / "Good-Template.json").write_text(json.dumps(good + bad))
    (memes / "Broken-Template.json").write_text('[{"url": "x", "boxes": ["unterminated"')
    return tmp_path


def test_keeps_and_drops_exactly_the_right_memes(messy_dataset: Path, tmp_path: Path):
    ds = load_dataset(messy_dataset, tmp_path / "cache")
    vocab = Vocab()
    kept = [ds.boxes(i, vocab) for i in range(len(ds))]
    assert kept == [
        ["hello world", "second box"],
        ["one box only"],
        ["", "empty first box"],
        ["x" * 99, "y" * 99],
    ]
    stats = ds.stats["Good-Template"]
    assert stats.kept == 4
    assert stats.dropped == {DROP_NO_BOXES: 1, DROP_BAD_CHARS: 3, DROP_TOO_LONG: 1, DROP_MALFORMED: 4}
    assert ds.stats["Broken-Template"].dropped == {DROP_UNREADABLE: 1}
    assert ds.caption(0).tolist().count(SEP) == 1
    assert ds.votes[0] == 1234 and ds.views[0] == 10000


def test_split_is_stable_and_about_five_percent(tmp_path: Path):
    from tests.conftest import write_dataset

    root = write_dataset(tmp_path / "d", {"A-Template": ["a"], "B-Template": ["b"]}, copies=2000)
    first = load_dataset(root, None).is_val
    second = load_dataset(root, None).is_val
    assert np.array_equal(first, second)
    assert 0.03 < first.mean() < 0.07


def test_cache_is_used_and_invalidated_when_the_source_changes(messy_dataset: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    load_dataset(messy_dataset, cache)
    files = list(cache.glob("dataset-*.npz"))
    assert len(files) == 1
    again = load_dataset(messy_dataset, cache)
    assert len(again) == 4 and list(cache.glob("dataset-*.npz")) == files
    path = messy_dataset / "memes" / "Good-Template.json"
    entries = json.loads(path.read_text())
    path.write_text(json.dumps(entries + [_meme("u9", ["one more"])]))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert len(load_dataset(messy_dataset, cache)) == 5


def test_a_missing_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="ImgFlip575K"):
        load_dataset(tmp_path / "nowhere", None)


class ConstantModel(torch.nn.Module):
    """Predicts the same distribution everywhere: logit 1 for 'a', 0 for the rest."""

    def forward(self, template_ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*tokens.shape, 72)
        logits[..., Vocab().symbols.index("a")] = 1.0
        return logits


def test_eval_on_a_hand_computed_case(tmp_path: Path):
    from tests.conftest import write_dataset

    root = write_dataset(tmp_path / "d", {"T1": ["aa"], "T2": ["ab", "a"]}, copies=1)
    ds = load_dataset(root, None)
    report = evaluate(ConstantModel(), ds, np.arange(len(ds)), model_templates=["T1"])
    # Targets: T1 "aa" -> a a <end>; T2 "ab", "a" -> a b <sep> a <end>.
    # 'a' is right at 2 of 3 positions of T1 and 2 of 5 of T2: 4 of 8.
    assert report.overall.positions == 8
    assert report.overall.correct == 4
    assert report.overall.accuracy == 0.5
    p_a = math.e / (math.e + 71)
    p_other = 1 / (math.e + 71)
    expected_bits = -(4 * math.log2(p_a) + 4 * math.log2(p_other)) / 8
    assert report.overall.bits_per_char == pytest.approx(expected_bits, rel=1e-5)
    assert report.per_template["T1"].accuracy == pytest.approx(2 / 3)
    assert report.per_template["T2"].accuracy == pytest.approx(2 / 5)


def test_fingerprint_follows_the_captions_not_the_file_times(messy_dataset: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(messy_dataset, copy, copy_function=shutil.copyfile)  # new file times
    os.utime(copy / "memes" / "Good-Template.json", ns=(1, 1))
    original, copied = load_dataset(messy_dataset, None), load_dataset(copy, None)
    assert original.fingerprint == copied.fingerprint  # a checkpoint's provenance survives a copy
    path = copy / "memes" / "Good-Template.json"
    path.write_text(json.dumps(json.loads(path.read_text()) + [_meme("u10", ["new caption"])]))
    assert load_dataset(copy, None).fingerprint != original.fingerprint


def test_packed_file_trains_and_evaluates_without_the_folder(messy_dataset: Path, tmp_path: Path, capsys):
    """`memebot data pack` is how the data travels to a machine without the folder (a lent GPU):
    the packed file loads to the same memes, split and fingerprint, with the folder gone."""
    import shutil

    from cli.main import main

    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\ncache_dir = "{tmp_path / "cache"}"\n')
    folder = tmp_path / "copy"
    shutil.copytree(messy_dataset, folder)
    original = load_dataset(folder)
    packed = tmp_path / "pack" / "memes.npz"
    assert main(["--config", str(config), "data", "pack", "--data", str(folder), "-o", str(packed)]) == 0
    assert str(packed) in capsys.readouterr().out
    shutil.rmtree(folder)
    again = load_dataset(packed)
    assert again.fingerprint == original.fingerprint and again.templates == original.templates
    assert np.array_equal(again.tokens, original.tokens) and np.array_equal(again.is_val, original.is_val)


def _liked_dataset(tmp_path: Path) -> Path:
    """Two templates; 'repost' three times on A (votes 0, 5, 50), once on B; a popular and an
    unpopular original on A. Every URL lands in the training split (checked below)."""
    memes = tmp_path / "memes"
    memes.mkdir()
    a = [
        _meme("https://t/a1", ["repost"], votes="0"),
        _meme("https://t/a2", ["repost"], votes="5"),
        _meme("https://t/a3", ["repost"], votes="50"),
        _meme("https://t/a4", ["loved", "by all"], votes="1,000"),
        _meme("https://t/a5", ["ignored"], votes="0"),
    ]
    (memes / "A.json").write_text(json.dumps(a))
    (memes / "B.json").write_text(json.dumps([_meme("https://t/b1", ["repost"], votes="3")]))
    return tmp_path


def test_dedupe_trains_on_each_caption_of_a_template_once(tmp_path: Path):
    from training.train import training_indices

    dataset = load_dataset(_liked_dataset(tmp_path))
    assert not dataset.is_val.any()
    kept = training_indices(dataset, dedupe=True)
    captions = [(dataset.templates[dataset.template_index[i]], dataset.boxes(i, Vocab())) for i in kept]
    # The first 'repost' of A stays, its two copies go; the same words on B are another meme.
    assert captions == [("A", ["repost"]), ("A", ["loved", "by all"]), ("A", ["ignored"]), ("B", ["repost"])]
    assert len(training_indices(dataset, dedupe=False)) == 6
    liked = training_indices(dataset, dedupe=True, min_votes=5)  # the 5- and 50-vote reposts are one
    assert [dataset.boxes(i, Vocab()) for i in liked] == [["repost"], ["loved", "by all"]]
    assert dataset.votes[liked].tolist() == [5, 1000]


def test_vote_weights_favour_liked_memes_and_average_one(tmp_path: Path):
    from training.train import meme_weights, training_indices

    dataset = load_dataset(_liked_dataset(tmp_path))
    idx = training_indices(dataset, dedupe=False)
    assert meme_weights(dataset, idx, 0.0) is None  # off: plain training
    w = meme_weights(dataset, idx, 1.0)
    raw = 1 + np.log1p(np.array([0, 5, 50, 1000, 0, 3], dtype=np.float64))  # file order: A then B
    assert np.allclose(w, raw / raw.mean(), atol=1e-6)
    assert w[3] > w[2] > w[1] > w[0] == w[4]


def test_per_token_weighted_loss_is_the_plain_loss_with_equal_weights_and_follows_the_weights():
    from training.batches import make_batch
    from training.train import loss_on

    torch.manual_seed(0)
    from model.transformer import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(n_layer=1, n_embd=16, n_head=2, n_templates=3)).eval()
    vocab = Vocab()
    caps = [
        np.array(vocab.encode_boxes(["a short one"])),
        np.array(vocab.encode_boxes(["much longer words here"])),
    ]
    plain = loss_on(model, make_batch(caps, [1, 2]))
    assert torch.allclose(loss_on(model, make_batch(caps, [1, 2], [1.0, 1.0]), per_token=True), plain)
    assert torch.allclose(loss_on(model, make_batch(caps, [1, 2], [3.0, 3.0]), per_token=True), plain)
    only_second = loss_on(model, make_batch(caps, [1, 2], [0.0, 1.0]), per_token=True)
    assert torch.allclose(only_second, loss_on(model, make_batch(caps[1:], [2])))
