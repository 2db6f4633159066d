"""The quality report (`memebot quality`): its figures on toy data are the hand-computed ones, the
discriminator tells apart what differs and not what does not, and the command prints every line
in the form scripts read."""

from __future__ import annotations

import json
import random
import re

import pytest

from cli.main import main
from training.quality import (
    Sample,
    TrainingReference,
    build_lexicon,
    caption_key,
    caption_length,
    copy_rate,
    discriminator_accuracy,
    distinct_2,
    first_word_prefix,
    has_repeat,
    key_path,
    measure,
    median_length,
    non_word_rate,
    repeat_rate,
    score_judgments,
    words,
    write_pairs,
)

LINE_FORMS = [
    r"non-words: \d+\.\d%",
    r"repeats: \d+\.\d%",
    r"copies: \d+\.\d%",
    r"distinct-2: \d+\.\d{3}",
    r"length: median \d+(\.\d+)? chars \(people \d+(\.\d+)?\)",
    r"discriminator: \d+\.\d%",
]


def test_words_are_letters_and_digits_with_inner_apostrophes():
    assert words("Don't STOP me-now 'quoted' 42 x_y ... it's") == [
        "don't",
        "stop",
        "me",
        "now",
        "quoted",
        "42",
        "x",
        "y",
        "it's",
    ]


def test_lexicon_keeps_words_seen_often_enough():
    assert build_lexicon(["a a b", "a b c", "b d"], min_count=3) == {"a", "b"}
    assert build_lexicon(["a a b", "a b c", "b d"], min_count=1) == {"a", "b", "c", "d"}


def test_non_words_leave_out_the_users_words():
    lexicon = {"the", "cat", "sat"}
    captions = [
        ["the cat", "sat zzz"],  # 1 non-word of 4
        ["blorp the", "cat"],  # "blorp" is the prefix: 0 of 2
        ["qux the blorp 42"],  # prefix "qux" left out; "blorp" is not the user's here: 1 of 3
        ["wug wug the"],  # the user's word written again is a word: 0 of 2
    ]
    prefixes = ["", "blorp", "qux", "wug"]
    assert non_word_rate(lexicon, captions, prefixes) == pytest.approx(2 / 11)
    assert non_word_rate(lexicon, [["", ""]], [""]) == 0.0
    # The decoder lets a template's own name be written ("pablo" on Sad-Pablo-Escobar).
    assert non_word_rate(lexicon, [["pablo sat"]], [""]) == 0.5
    assert non_word_rate(lexicon, [["pablo sat"]], [""], ["Sad-Pablo-Escobar"]) == 0.0
    with pytest.raises(ValueError):
        non_word_rate(lexicon, captions, [""])


def test_repeats_are_a_word_trigram_twice_or_a_box_twice():
    assert has_repeat(["a b c a b c"])
    assert has_repeat(["a b", "c a b c"])  # across boxes
    assert has_repeat(["stay at the store", "stay at the store"])
    assert has_repeat(["same", "same"])  # a box twice, however short
    assert not has_repeat(["a b c", "d a b"])
    assert not has_repeat(["a b a b"])  # bigrams may repeat
    assert not has_repeat(["top", "", ""])  # empty boxes are not a repeat
    assert repeat_rate([["a b c a b c"], ["x", "x"], ["a b c", "d a b"], ["", ""]]) == 0.5


def test_copies_compare_whole_captions_box_by_box():
    training = {caption_key(["writing tests", "shipping on friday"]), caption_key(["one box"])}
    captions = [
        ["writing tests", "shipping on friday", ""],  # padded to three boxes: still a copy
        ["writing tests shipping on friday"],  # the same words in one box: not a copy
        ["one box"],
        ["shipping on friday", "writing tests"],
    ]
    assert copy_rate(training, captions) == 0.5


def test_distinct_2_and_lengths():
    assert distinct_2([["a b a b"], ["a b"]]) == 0.5  # bigrams ab ba ab ab: 2 distinct of 4
    assert distinct_2([["one"], []]) == 0.0
    assert caption_length(["ab", "cd"]) == 5  # a box break is one symbol
    assert caption_length(["abcdef", "", ""]) == 6  # empty boxes at the end do not count
    assert median_length([["abc"], ["ab", "cd"], ["abcdef", ""]]) == 5
    assert median_length([["ab"], ["abcd"]]) == 3


def test_prefix_is_the_first_word_as_typed():
    assert first_word_prefix(["when you", "x"]) == "when"
    assert first_word_prefix(["", "i'm fine"]) == "|i'm"
    assert first_word_prefix(["", ""]) == ""


def test_the_report_on_toy_data_is_the_hand_computed_one():
    training = [["the cat sat"], ["the cat sat"], ["the cat sat"], ["on the mat", "ok"]]
    reference = TrainingReference(
        lexicon=frozenset(build_lexicon(caption_key(b) for b in training)),
        captions=frozenset(caption_key(b) for b in training),
    )
    assert reference.lexicon == {"the", "cat", "sat"}
    samples = [
        Sample(0, "T", ("the dog sat",), ""),
        Sample(1, "T", ("a cat", "sat on it"), "a"),
        Sample(2, "T", ("x",), ""),
        Sample(3, "T", ("cat cat",), "cat"),
    ]
    generated = [
        ["the cat sat", ""],  # a copy; no non-words
        ["a zzz", "a zzz"],  # "a" is the user's, also the second time: 2 non-words of 3; a box twice
        ["the cat sat the cat sat"],  # a repeated trigram
        ["cat on the mat", "ok"],  # "cat" is the user's; "on", "mat", "ok": 3 non-words of 4
    ]
    report = measure(generated, samples, reference, model_id="toy")
    assert report.non_words == 5 / 16
    assert report.repeats == 0.5
    assert report.copies == 0.25
    # bigrams: (the cat)(cat sat) | (a zzz)(zzz a)(a zzz) | (the cat)(cat sat)(sat the)(the cat)(cat sat)
    # | (cat on)(on the)(the mat)(mat ok): 14 in all, 9 distinct
    assert report.distinct_2 == 9 / 14
    assert report.length_median == 14  # lengths 11, 11, 23, 17
    assert report.people_length_median == 9  # lengths 11, 15, 1, 7
    assert 0 <= report.discriminator <= 1
    for line, form in zip(report.lines(), LINE_FORMS, strict=True):
        assert re.fullmatch(form, line), line
    assert report.lines()[0] == "non-words: 31.2%"
    assert report.lines()[4] == "length: median 14 chars (people 9)"
    side = report.lines(baseline=report)
    assert side[0] == "non-words: 31.2% (baseline 31.2%)"
    for line, form in zip(side, LINE_FORMS, strict=True):
        assert re.fullmatch(form + r" \(baseline .+\)", line), line
        assert re.match(form, line)
    assert json.loads(json.dumps(report.to_dict()))["non_words"] == report.non_words


def test_discriminator_tells_apart_what_differs_and_not_what_does_not():
    real = [f"the cat sat on the mat {i}" for i in range(20)]
    fake = [f"zzzz qqqq xxxx {i}" for i in range(20)]
    assert discriminator_accuracy(real, fake) >= 0.95
    vocab = ["cat", "dog", "when", "you", "the", "meme", "is", "a", "me", "my", "friend", "i", "not", "so"]
    rng = random.Random(0)

    def text() -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 9)))

    same = discriminator_accuracy([text() for _ in range(300)], [text() for _ in range(300)])
    assert abs(same - 0.5) < 0.1
    assert discriminator_accuracy(real, fake) == discriminator_accuracy(real, fake)  # deterministic
    with pytest.raises(ValueError):
        discriminator_accuracy(["a"], ["b"])


def test_pairs_file_and_key(tmp_path):
    samples = [Sample(i, "Drake-Hotline-Bling", (f"person {i}", "box"), "") for i in range(8)]
    ours = [[f"model {i}", ""] for i in range(8)]
    path = tmp_path / "pairs.md"
    kp = write_pairs(path, samples, ours, seed=0, template_names={"Drake-Hotline-Bling": "Drake"})
    assert kp == key_path(path) == tmp_path / "pairs.md.key.json"
    text = path.read_text()
    key = json.loads(kp.read_text())["pairs"]
    assert len(key) == 8 and {k["person"] for k in key} == {"A", "B"}  # both orders occur
    for k in key:
        i = k["pair"] - 1
        assert f"- {k['person']}: person {i} | box" in text
        assert f"- {k['model']}: model {i}\n" in text
    assert "model" not in text.split("## 1.")[1].split("\n")[0]  # headings give nothing away
    again = tmp_path / "again.md"
    write_pairs(again, samples, ours, seed=0, template_names={"Drake-Hotline-Bling": "Drake"})
    assert again.read_text() == text  # the order is fixed by the seed


@pytest.fixture
def quality_config(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        f'[paths]\ncache_dir = "{tmp_path / "cache"}"\n'
        '[model]\ndevice = "cpu"\nfused_kernel = false\nspeculative = false\n'
    )
    return config


def test_quality_command_end_to_end(tmp_path, tiny_checkpoint, synthetic_dataset, quality_config, capsys):
    base = ["--config", str(quality_config), "quality", "--checkpoint", str(tiny_checkpoint)]
    base += ["--data", str(synthetic_dataset), "--n", "6"]
    assert main(base) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(LINE_FORMS)
    for line, form in zip(lines, LINE_FORMS, strict=True):
        assert re.fullmatch(form, line), line

    pairs = tmp_path / "pairs.md"
    assert main([*base, "--baseline", str(tiny_checkpoint), "--json", "--pairs", str(pairs)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 6 and report["captions"] == 6
    for name in ("non_words", "repeats", "copies", "distinct_2", "length_median", "discriminator"):
        assert report[name] == report["baseline"][name]  # same model, same seeds: same captions
    assert all(e["caption"] and e["person"] for e in report["examples"])
    assert pairs.read_text().count("\n## ") == 6
    assert len(json.loads(key_path(pairs).read_text())["pairs"]) == 6


def test_a_readers_answers_are_scored_against_the_key(tmp_path):
    from cli.main import main

    pairs = tmp_path / "pairs.md"
    pairs.write_text("# pairs")
    key = {
        "pairs": [
            {"pair": 1, "person": "A", "model": "B"},
            {"pair": 2, "person": "B", "model": "A"},
            {"pair": 3, "person": "A", "model": "B"},
        ]
    }
    (tmp_path / "pairs.md.key.json").write_text(json.dumps(key))
    # Pair 2: the reader took ours (A) for the person's. Scores: ours 1, 4, 2; people's 3, 2, 5.
    answers = [
        {"pair": 1, "person": "A", "A": 3, "B": 1},
        {"pair": 2, "person": "a", "A": 4, "B": 2},
        {"pair": 3, "person": "A", "A": 5, "B": 2},
    ]
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    judged = score_judgments(key, answers)
    assert (judged.pairs, judged.fooled) == (3, 1)
    assert judged.ours == pytest.approx(7 / 3) and judged.people == pytest.approx(10 / 3)
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["quality", "--pairs", str(pairs), "--judged", str(tmp_path / "answers.json")]) == 0
    assert out.getvalue().splitlines() == ["taken for the person's: 1 of 3", "score: ours 2.33, people 3.33"]


def test_several_readers_are_pooled_and_their_agreement_shown(tmp_path):
    """Three readers of the same three pairs: the README's pooled "N of 144" figure, which
    pairs fooled how many of them, and on how many pairs they all said the same."""
    from cli.main import main

    pairs = tmp_path / "pairs.md"
    pairs.write_text("# pairs")
    key = {"pairs": [{"pair": k, "person": "A", "model": "B"} for k in (1, 2, 3)]}
    (tmp_path / "pairs.md.key.json").write_text(json.dumps(key))
    # Pair 2 fools every reader, pair 3 one of them, pair 1 none.
    said = [("A", "B", "A"), ("A", "B", "B"), ("A", "B", "A")]
    files = []
    for r, verdicts in enumerate(said, 1):
        answers = [{"pair": k, "person": v, "A": 3, "B": r} for k, v in enumerate(verdicts, 1)]
        files.append(tmp_path / f"answers-r{r}.json")
        files[-1].write_text(json.dumps(answers))
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["quality", "--pairs", str(pairs), "--judged", *map(str, files)]) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "answers-r1.json: taken for the person's: 1 of 3"
    assert lines[-4:] == [
        "all 3 readers: taken for the person's: 4 of 9 (44%)",
        "all 3 readers: score: ours 2.00, people 3.00",
        "pairs taken for the person's: #2 by 3, #3 by 1",
        "readers agreed on 2 of 3 pairs",
    ]
    # A file that is not a reader's answers is named, and nothing is printed as if scored.
    (tmp_path / "bad.json").write_text("{not json")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert (
            main(["quality", "--pairs", str(pairs), "--judged", str(files[0]), str(tmp_path / "bad.json")])
            == 2
        )
    assert out.getvalue() == ""
