"""Decoding that cannot write a non-word or loop (model/lexicon.py), and best of N.

The word rules work inside decoding, so they are tested on what comes out: over random
prefixes, seeds and models (hypothesis), no generated word is outside the lexicon, the user's
prefix is kept as typed, no word 3-gram and no box comes twice. Speculative guesses and the fused
kernel change nothing. Best of N returns the candidates best first, and 🔁 serves them in turn.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.memes import ChatContext, MemeOptions
from bot.service import CANDIDATES, REROLL_OF
from common.config import PROJECT_ROOT, load_config
from fakes.caption_model import (
    ScriptedCaptions,
    config_for_tests,
    scripted_service,
    write_untrained_checkpoint,
)
from model.checkpoint import load_checkpoint
from model.decoding import MAX_RUN, Row
from model.fused import load_fused_kernel
from model.generate import CaptionGenerator, load_generator
from model.lexicon import (
    PENALTY,
    BatchRules,
    Lexicon,
    LexiconError,
    Rules,
    build_lexicon,
    caption_hash,
    load_lexicon,
    template_words,
    words,
)
from model.pool import InvalidRequest, check_request, request_rows
from model.requests import Caption, GenerationRequest, GenerationResult
from model.vocab import END, SEP, START, Vocab, normalize_user_text
from tests.conftest import SYNTHETIC_CAPTIONS
from tests.helpers.templates import catalog_template
from tests.test_speculative import requests_to_compare, table_from

VOCAB = Vocab()
ID = {s: i for i, s in enumerate(VOCAB.symbols)}
SHIPPED = PROJECT_ROOT / "data/models/memebot-transformer.pt"
SHIPPED_LEXICON = PROJECT_ROOT / "data/models/memebot-lexicon.txt.gz"
KERNEL_DIR = PROJECT_ROOT / ".cache" / "kernels"
RULES = {"lexicon": True, "block_repeats": True}

# A small lexicon the test models spell along: the synthetic captions' words and a few with
# apostrophes and digits.
SMALL_WORDS = sorted(
    {w for boxes in SYNTHETIC_CAPTIONS.values() for box in boxes for w in words(box)}
    | {"go", "gone", "good", "goal", "i", "a", "an", "and", "don't", "can't", "3am", "2nd", "tab", "zoo"}
)


def small_lexicon() -> Lexicon:
    return Lexicon({w: 3 for w in SMALL_WORDS})


# ---- checking captions ------------------------------------------------------------------------


def split_generated(boxes: list[str], prefix: str) -> tuple[list[str], list[str], int]:
    """(words the user typed, words the model wrote after them, index of the box the prefix
    ends in). The prefix must be kept as typed: asserted here."""
    typed = normalize_user_text(prefix) if prefix else [""]
    last = len(typed) - 1
    for i, box in enumerate(typed[:-1]):
        assert boxes[i] == box.strip(), (boxes, prefix)
    assert boxes[last].startswith(typed[last].strip()), (boxes, prefix)
    rest = [boxes[last][len(typed[last].strip()) :], *boxes[last + 1 :]]
    return words(" ".join(typed)), [w for box in rest for w in words(box)], last


def check_caption(boxes: list[str], request: GenerationRequest, lexicon: Lexicon | None) -> None:
    """The word rules hold for a generated caption (the user's own text is theirs)."""
    own, generated, last = split_generated(boxes, request.prefix)
    if lexicon is not None and request.lexicon:
        allowed = set(own) | set(template_words(request.template))
        strays = [w for w in generated if w not in lexicon and w not in allowed]
        assert not strays, (strays, boxes, request)
    if request.block_repeats:
        ws = own + generated
        seen = {tuple(ws[k - 2 : k + 1]) for k in range(2, min(len(own), len(ws)))}
        for k in range(max(2, len(own)), len(ws)):
            gram = tuple(ws[k - 2 : k + 1])
            assert gram not in seen, (gram, boxes, request)
            seen.add(gram)
        texts = [b.strip() for b in boxes]
        for i in range(last, len(texts)):
            if texts[i]:
                assert texts[i] not in texts[:i], (boxes, request)


def usable_prefix(prefix: str, n_boxes: int) -> bool:
    """Prefixes whose boxes the checks can line up: no more boxes than the template has (extra
    ones are joined into the last), and no box the user typed twice (theirs to write)."""
    boxes = [b.strip() for b in normalize_user_text(prefix)]
    typed = [b for b in boxes if b]
    return len(boxes) <= n_boxes and len(set(typed)) == len(typed)


def has_repeat(boxes: list[str]) -> bool:
    texts = [b.strip() for b in boxes if b.strip()]
    ws = words(" ".join(boxes))
    grams = list(zip(ws, ws[1:], ws[2:], strict=False))
    return len(set(texts)) < len(texts) or len(set(grams)) < len(grams)


# ---- a scripted network: the next symbol's logits depend on the last symbol only -------------


@dataclass
class LastSymbol:
    last: torch.Tensor

    def select(self, rows: torch.Tensor) -> LastSymbol:
        return LastSymbol(self.last[rows])


class BigramNet(torch.nn.Module):
    """logits = table[last symbol]: a network whose wishes a test can write down."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def prefill(self, template_ids: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, LastSymbol]:
        return self.table[tokens[:, -1]], LastSymbol(tokens[:, -1])

    def step(self, tokens: torch.Tensor, state: LastSymbol) -> tuple[torch.Tensor, LastSymbol]:
        return self.table[tokens], LastSymbol(tokens)


def wishes(*pairs: tuple[str, str], base: torch.Tensor | None = None) -> torch.Tensor:
    """A table where after symbol a the network most wants b, for each (a, b) ("^" = <start>,
    "|" = <sep>, "$" = <end>); the rest of the row from `base` (default: all equal)."""
    V = len(VOCAB)
    table = torch.zeros(V, V) if base is None else base.clone()
    special = {"^": START, "|": SEP, "$": END}
    for a, b in pairs:
        ia, ib = special.get(a, ID.get(a)), special.get(b, ID.get(b))
        table[ia, ib] = table[ia].max() + 5.0
    return table


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    return write_untrained_checkpoint(tmp_path_factory.mktemp("untrained") / "model.pt")


def bigram_generator(checkpoint: Path, table: torch.Tensor, lexicon: Lexicon | None) -> CaptionGenerator:
    return CaptionGenerator(load_checkpoint(checkpoint), model=BigramNet(table), lexicon=lexicon)


# ---- the lexicon -------------------------------------------------------------------------------


def test_words_are_what_the_quality_report_counts():
    assert words("Don't stop! It's 3am, 9000 lols") == ["don't", "stop", "it's", "3am", "9000", "lols"]
    assert words("'quoted' rock'n'roll dogs' don''t") == ["quoted", "rock'n'roll", "dogs", "don", "t"]
    assert template_words("Y-U-No") == ["y", "u", "no"]
    assert template_words("Change-My-Mind") == ["change", "my", "mind"]


def test_lexicon_counts_words_saves_and_loads(tmp_path):
    lexicon = build_lexicon(["the cat | the dog", "the cat's toy\nthe end", "cat 123 cat"], min_count=2)
    assert lexicon.counts == {"the": 4, "cat": 3}  # numbers are never counted: always allowed
    assert "123" in lexicon and "cat" in lexicon and "dog" not in lexicon and lexicon.captions == 3
    path = tmp_path / "lexicon.txt.gz"
    lexicon.save(path)
    first = path.read_bytes()
    lexicon.save(path)
    assert path.read_bytes() == first  # reproducible: no time stamp
    again = load_lexicon(path)
    assert again == lexicon
    remembering = dataclasses.replace(lexicon, seen=frozenset({caption_hash(["the cat", "the dog"])}))
    remembering.save(path)
    again = load_lexicon(path)
    assert again == remembering and again.counts == lexicon.counts
    assert again.is_copy(["the cat", "the dog"]) and again.is_copy(["the cat", "the dog", ""])
    assert not again.is_copy(["the dog", "the cat"]) and not lexicon.is_copy(["the cat", "the dog"])
    assert load_lexicon(path, min_count=4).counts == {"the": 4}
    assert load_lexicon(path, min_count=1).min_count == 2  # never below what the file kept
    (tmp_path / "junk.gz").write_bytes(b"not gzip")
    with pytest.raises(LexiconError):
        load_lexicon(tmp_path / "junk.gz")
    import gzip

    (tmp_path / "bad-header.gz").write_bytes(gzip.compress(b"memebot-lexicon 1\tmin_count=three\nthe\t4\n"))
    with pytest.raises(LexiconError, match="not a readable lexicon"):
        load_lexicon(tmp_path / "bad-header.gz")
    with pytest.raises(ValueError):
        build_lexicon(["a"], min_count=0)


def test_an_unreadable_lexicon_file_leaves_decoding_running_without_the_rule(
    tiny_checkpoint, tmp_path, caplog
):
    """The lexicon is optional, like the draft table: a damaged file must not take the model down."""
    bad = tmp_path / "lexicon.txt.gz"
    bad.write_bytes(b"not gzip")
    with caplog.at_level("WARNING"):
        gen = load_generator(tiny_checkpoint, lexicon=bad)
    assert gen.lexicon is None and "decoding without the word lexicon" in caplog.text
    req = GenerationRequest("Drake-Hotline-Bling", method="greedy", n_boxes=2, **RULES)
    assert gen.generate_batch([req])[0].captions[0].boxes == SYNTHETIC_CAPTIONS["Drake-Hotline-Bling"]


def test_the_shipped_lexicon_is_small_and_knows_words_not_the_non_words_readers_saw():
    config = load_config(None, env={})
    assert config.lexicon_path == SHIPPED_LEXICON
    assert SHIPPED_LEXICON.stat().st_size < 4_000_000  # the words and 330k caption fingerprints
    lexicon = load_lexicon(SHIPPED_LEXICON)
    assert lexicon.min_count == 3 and len(lexicon) > 20_000 and lexicon.captions > 300_000
    assert len(lexicon.seen) > 300_000 and lexicon.is_copy(["one does not simply", "use the wrong meme"])
    for word in ("don't", "it's", "3am", "lol", "imgflip", "pineapple", "spongebob", "9000"):
        assert word in lexicon, word
    for word in ("dispensive", "friendshirt", "chestress", "extrats"):
        assert word not in lexicon, word


# ---- what the rules allow next -------------------------------------------------------------------


def allowed_after(
    text: str, lexicon: Lexicon | None = None, banned: tuple[str, ...] = (), **request: object
) -> set[str]:
    """The symbols the rules let a caption that reads `text` ("|" between boxes) write next."""
    fields = {"template": "Some-Template", "lexicon": lexicon is not None, "block_repeats": True, **request}
    req = GenerationRequest(banned_words=banned, **fields)  # type: ignore[arg-type]
    batch = BatchRules(Rules(VOCAB.symbols, lexicon), [req])
    state = batch.state(0, VOCAB.encode_boxes(text.split("|")))
    assert state is not None
    logits = torch.zeros(1, len(VOCAB))
    batch.mask(logits, [0], [0], [state])
    return {VOCAB.symbols[i] for i in range(len(VOCAB)) if logits[0, i] > PENALTY / 2} - {"<pad>", "<start>"}


ENDERS = {" ", "!", ",", ".", "?", "<sep>", "<end>"}


def test_a_word_is_spelled_along_the_lexicon_and_ends_only_where_a_word_ends():
    lexicon = Lexicon({"cat": 3, "cats": 3, "can't": 3, "dog": 3, "3am": 3})
    assert allowed_after("the ca", lexicon) == {"t", "n"}  # no ending: "ca" is not a word
    after_cat = allowed_after("the cat", lexicon)
    assert {"s", "'"} | ENDERS <= after_cat and "x" not in after_cat and "1" not in after_cat
    assert allowed_after("the can", lexicon) == {"'"}
    assert allowed_after("the can'", lexicon) == {"t"}
    assert {"'", " "} <= allowed_after("the cat'", lexicon)  # a quote mark after a word
    after_3 = allowed_after("the 3", lexicon)  # numbers go on and end anywhere
    assert {"a", "0", "9"} | ENDERS <= after_3 and "b" not in after_3
    assert allowed_after("the 3a", lexicon) == {"m"}
    start = allowed_after("the ", lexicon)
    assert {"c", "d", "3", "7", "'", '"'} <= start and "x" not in start
    assert "c" in allowed_after("the ''", lexicon)  # '' ends a word, a new one may start


def test_the_prefix_and_template_words_join_the_lexicon_for_their_request():
    lexicon = Lexicon({"cat": 3})
    assert allowed_after("zo", lexicon, prefix="zork cat") == {"r"}
    assert " " in allowed_after("zork", lexicon, prefix="zork cat")
    assert "z" not in allowed_after("", lexicon, prefix="cat")
    assert " " in allowed_after("u", lexicon, template="Y-U-No")
    assert allowed_after("kyle'", lexicon, prefix="KYLE’S mom") == {"s"}  # as decoding reads it


def test_banned_words_leave_the_lexicon_for_requests_with_the_filter():
    lexicon = Lexicon({"darn": 3, "darnit": 3, "dart": 3})
    assert " " in allowed_after("darn", lexicon)
    after = allowed_after("darn", lexicon, banned=("darn",))
    assert " " not in after and "i" in after
    assert allowed_after("dar", lexicon, banned=("darn", "darnit")) == {"t"}


def test_a_word_that_would_repeat_a_3_gram_cannot_end_and_a_box_cannot_come_twice():
    # No lexicon: only the repeat rules.
    assert " " in allowed_after("a b c a b")
    blocked = allowed_after("a b c a b c")
    assert not blocked & (ENDERS - {"'"}) and "d" in blocked and "'" in blocked
    assert " " in allowed_after("a b c a b cd")
    assert " " in allowed_after("x b c a b c")  # (b, c) then c: a new 3-gram
    assert not allowed_after("a b c | a b c'") & ENDERS  # the ' would end the same word
    box = allowed_after("go | go")
    assert "<sep>" not in box and "<end>" not in box and " " in box
    assert {"<sep>", "<end>"} <= allowed_after("go | gone")
    # With the lexicon, a letter whose every way on repeats a 3-gram is masked before it is written.
    lexicon = Lexicon({"a": 3, "b": 3, "go": 3, "goo": 3, "gone": 3})
    assert "o" not in allowed_after("a b goo a b go", lexicon)  # "goo" would have no way on
    assert "n" in allowed_after("a b goo a b go", lexicon)


# ---- decoding with the rules: scripted networks -------------------------------------------------


def test_a_looping_network_writes_no_repeated_3_gram_with_the_rules(untrained):
    # It wants "go go go go ..." forever.
    table = wishes(("^", "g"), ("g", "o"), ("o", " "), (" ", "g"))
    for method in ("greedy", "beam"):
        plain = bigram_generator(untrained, table, None)
        req = GenerationRequest("Change-My-Mind", method=method, max_length=40, n_boxes=2, beam_width=3)
        loop = plain.generate_batch([req])[0].captions[0]
        assert has_repeat(loop.boxes) and loop.boxes[0].startswith("go go go go")
        ruled = dataclasses.replace(req, block_repeats=True)
        caption = plain.generate_batch([ruled])[0].captions[0]
        check_caption(caption.boxes, ruled, None)
        assert caption.boxes[0].startswith("go go go") and not has_repeat(caption.boxes)


def test_a_network_that_spells_non_words_writes_lexicon_words(untrained):
    # It wants "zqx zqx ..." and, second, the letters of "goal"/"good".
    table = wishes(("^", "z"), ("z", "q"), ("q", "x"), ("x", " "), (" ", "z"))
    table = wishes(("^", "g"), ("g", "o"), ("o", "a"), ("a", "l"), ("l", " "), (" ", "g"), base=table)
    table = wishes(("^", "z"), ("z", "q"), ("q", "x"), ("x", " "), (" ", "z"), base=table)
    lexicon = small_lexicon()
    generator = bigram_generator(untrained, table, lexicon)
    for method in ("greedy", "sample", "beam"):
        req = GenerationRequest("Change-My-Mind", method=method, max_length=30, n_boxes=2, seed=3, **RULES)
        caption = generator.generate_batch([req])[0].captions[0]
        check_caption(caption.boxes, req, lexicon)
        assert "zqx" not in caption.text and caption.text.strip()
        plain = generator.generate_batch([dataclasses.replace(req, lexicon=False)])[0].captions[0]
        assert "zqx" in plain.text


def test_fill_boxes_writes_every_box_where_the_network_would_stop(untrained):
    # It wants "hi", then a box break, then to end at once (a blank box); second, "yo".
    table = wishes(
        ("^", "h"), ("h", "i"), ("i", "|"), ("|", "y"), ("|", "$"), ("y", "o"), ("o", "|"), ("o", "$")
    )
    generator = bigram_generator(untrained, table, None)
    for method in ("greedy", "sample", "beam"):
        req = GenerationRequest(
            "Change-My-Mind", method=method, max_length=40, n_boxes=3, seed=1, beam_width=3
        )
        assert generator.generate_batch([req])[0].captions[0].boxes == ["hi", "", ""], method
        filled = generator.generate_batch([dataclasses.replace(req, fill_boxes=True)])[0].captions[0]
        assert filled.boxes == ["hi", "yo", "yo"], method
    # Without a box count there is nothing to fill; a prefix's blank box is filled too.
    free = GenerationRequest("Change-My-Mind", method="greedy", max_length=40, fill_boxes=True)
    assert generator.generate_batch([free])[0].captions[0].boxes == ["hi", ""]
    typed = GenerationRequest(
        "Change-My-Mind", "hi|", method="greedy", max_length=40, n_boxes=2, fill_boxes=True
    )
    assert generator.generate_batch([typed])[0].captions[0].boxes == ["hi", "yo"]


def test_guesses_and_plain_decoding_fill_boxes_alike(tiny_checkpoint, tmp_path):
    draft = tmp_path / "draft.npz"
    table_from(["pineapple on pizza is fine", "writing code", "tabs and spaces", "it was aliens"]).save(draft)
    guessing, plain = load_generator(tiny_checkpoint, draft=draft), load_generator(tiny_checkpoint)
    for req in requests_to_compare(("", "pineapple on", "zork it|"), 1.4, fill_boxes=True):
        req = dataclasses.replace(req, n_boxes=4, max_length=150)
        ours = guessing.generate_batch([req])[0].captions[0]
        assert ours.boxes == plain.generate_batch([req])[0].captions[0].boxes, req
        cut = sum(len(box) + 1 for box in ours.boxes) >= 150  # the length cap ends any caption
        assert cut or all(box.strip() for box in ours.boxes), (req, ours.boxes)


def test_a_caption_cut_by_the_length_cap_loses_its_unfinished_word(untrained):
    # "gone gone ..." cut at 7 symbols would end in "go" + "n": the "n" word piece goes.
    table = wishes(("^", "g"), ("g", "o"), ("o", "n"), ("n", "e"), ("e", " "), (" ", "g"))
    lexicon = Lexicon({"gone": 3, "going": 3})
    generator = bigram_generator(untrained, table, lexicon)
    req = GenerationRequest("Change-My-Mind", method="greedy", max_length=7, n_boxes=1, **RULES)
    assert generator.generate_batch([req])[0].captions[0].boxes == ["gone"]
    plain = dataclasses.replace(req, lexicon=False, block_repeats=False)
    assert generator.generate_batch([plain])[0].captions[0].boxes == ["gone go"]


def test_a_box_the_length_cap_leaves_equal_to_an_earlier_one_loses_its_words(untrained):
    table = wishes(("^", "g"), ("g", "o"), ("o", "|"), ("|", "g"))
    generator = bigram_generator(untrained, table, None)
    req = GenerationRequest("Drake-Hotline-Bling", method="greedy", max_length=5, n_boxes=2)
    assert generator.generate_batch([req])[0].captions[0].boxes == ["go", "go"]
    ruled = dataclasses.replace(req, block_repeats=True)
    assert generator.generate_batch([ruled])[0].captions[0].boxes == ["go", ""]
    longer = dataclasses.replace(ruled, max_length=12)  # room to write on: "go" and more
    boxes = generator.generate_batch([longer])[0].captions[0].boxes
    assert boxes[0] == "go" and boxes[1].startswith("go") and boxes[1] != "go"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**16),
    method=st.sampled_from(["greedy", "sample", "beam"]),
    prefix=st.lists(st.sampled_from([*SMALL_WORDS, "zork", "qq9", "|"]), max_size=4).map(" ".join),
    lexicon_on=st.booleans(),
)
def test_random_networks_never_write_a_word_outside_the_lexicon_nor_repeat(
    untrained, seed, method, prefix, lexicon_on
):
    gen = torch.Generator().manual_seed(seed)
    table = 3.0 * torch.randn(len(VOCAB), len(VOCAB), generator=gen)
    lexicon = small_lexicon()
    generator = bigram_generator(untrained, table, lexicon)
    if not usable_prefix(prefix, 3):
        return
    req = GenerationRequest(
        "Two-Buttons",
        prefix=prefix,
        method=method,
        seed=seed,
        temperature=1.5,
        max_length=60,
        n_boxes=3,
        lexicon=lexicon_on,
        block_repeats=True,
    )
    for caption in generator.generate_batch([req])[0].captions:
        check_caption(caption.boxes, req, lexicon)


# ---- decoding with the rules: real networks -----------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint) -> CaptionGenerator:
    return CaptionGenerator(load_checkpoint(tiny_checkpoint), lexicon=small_lexicon())


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    method=st.sampled_from(["greedy", "sample", "beam"]),
    template=st.sampled_from(sorted(SYNTHETIC_CAPTIONS)),
    prefix=st.lists(
        st.sampled_from(["pineapple", "on", "writing", "tests", "zork", "i'm", "|", "9000", "it", "was"]),
        max_size=5,
    ).map(" ".join),
)
def test_the_lexicon_mask_never_yields_a_word_outside_the_lexicon(tiny, seed, method, template, prefix):
    if not usable_prefix(prefix, 3):
        return
    req = GenerationRequest(
        template, prefix=prefix, method=method, seed=seed, temperature=1.6, n_boxes=3, max_length=80, **RULES
    )
    (result,) = tiny.generate_batch([req])
    assert result.captions
    for caption in result.captions:
        check_caption(caption.boxes, req, tiny.lexicon)


def test_rules_leave_captions_that_keep_them_alone(tiny):
    # The tiny model's memorised captions are lexicon words: unchanged, but for the one that
    # repeats a 3-gram ("it was aliens" twice), which the rules turn away from.
    for template, boxes in SYNTHETIC_CAPTIONS.items():
        req = GenerationRequest(template, method="greedy", n_boxes=len(boxes), **RULES)
        got = tiny.generate_batch([req])[0].captions[0].boxes
        if has_repeat(boxes):
            assert got[0] == boxes[0] and got[1].startswith("but it was") and got[1] != boxes[1]
            check_caption(got, req, tiny.lexicon)
        else:
            assert got == boxes


def ruled_requests() -> list[GenerationRequest]:
    # "zork": a word of the prefix that no lexicon has, kept and never spelled by the model.
    return requests_to_compare(("", "pineapple on", "zork it|"), 1.4, **RULES)


def test_guesses_give_exactly_the_captions_of_plain_decoding_under_the_rules(tiny_checkpoint, tmp_path):
    draft = tmp_path / "draft.npz"
    table_from(["pineapple on pizza is fine", "writing code", "tabs and spaces", "it was aliens"]).save(draft)
    lexicon = tmp_path / "lexicon.txt.gz"
    small_lexicon().save(lexicon)
    guessing = load_generator(tiny_checkpoint, draft=draft, lexicon=lexicon)
    plain = load_generator(tiny_checkpoint, lexicon=lexicon)
    assert guessing.draft is not None and plain.draft is None and guessing.lexicon is not None
    for req in ruled_requests():
        ours = guessing.generate_batch([req])[0].captions[0]
        theirs = plain.generate_batch([req])[0].captions[0]
        assert ours.boxes == theirs.boxes, req
        assert ours.logprob == pytest.approx(theirs.logprob, abs=1e-3)
        check_caption(ours.boxes, req, plain.lexicon)


def test_a_batch_under_mixed_rules_gives_each_request_what_it_gets_alone(tiny):
    reqs = ruled_requests()[::3]
    reqs[1] = dataclasses.replace(reqs[1], lexicon=False)
    reqs[2] = dataclasses.replace(reqs[2], block_repeats=False, lexicon=False)
    reqs[3] = dataclasses.replace(reqs[3], banned_words=("pizza", "aliens"))
    reqs.append(dataclasses.replace(reqs[0], method="beam", beam_width=3))
    together = [[c.boxes for c in r.captions] for r in tiny.generate_batch(reqs)]
    alone = [[c.boxes for c in tiny.generate_batch([r])[0].captions] for r in reqs]
    assert together == alone


@pytest.fixture(scope="module")
def kernel():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler here: the kernel is optional and decoding uses PyTorch ops")
    built = load_fused_kernel(KERNEL_DIR)
    assert built is not None
    return built


def test_the_kernel_gives_the_same_captions_under_the_rules(kernel, tiny_checkpoint, tmp_path):
    draft = tmp_path / "draft.npz"
    table_from(["pineapple on pizza is fine", "writing code", "tabs and spaces", "it was aliens"]).save(draft)
    lexicon = tmp_path / "lexicon.txt.gz"
    small_lexicon().save(lexicon)
    fast = load_generator(
        tiny_checkpoint, draft=draft, half_weights=True, kernel_dir=KERNEL_DIR, lexicon=lexicon
    )
    plain = load_generator(tiny_checkpoint, half_weights=True, lexicon=lexicon)
    assert fast._step.fused is not None  # type: ignore[union-attr]
    reqs = [*ruled_requests(), *(dataclasses.replace(r, method="beam") for r in ruled_requests()[:6])]
    reqs += [dataclasses.replace(r, best_of=4) for r in ruled_requests() if r.method == "sample"][:4]
    for req in reqs:
        got = [c.boxes for c in fast.generate_batch([req])[0].captions]
        assert got == [c.boxes for c in plain.generate_batch([req])[0].captions], req


# ---- the shipped model ---------------------------------------------------------------------------

needs_shipped = pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped model in this checkout")
TEMPLATES = ["Change-My-Mind", "Drake-Hotline-Bling", "Two-Buttons", "Ancient-Aliens", "One-Does-Not-Simply"]


def shipped_requests() -> list[GenerationRequest]:
    reqs = []
    for i, template in enumerate(TEMPLATES[:3]):
        for method, extra in (("greedy", {}), ("sample", {}), ("sample", {"best_of": 4}), ("beam", {})):
            prefix = ["", "when you", "pineapple on", "me|"][i % 4]
            reqs.append(
                GenerationRequest(template, prefix=prefix, method=method, seed=i, n_boxes=2, **RULES, **extra)
            )
    return reqs


@pytest.fixture(scope="module")
def shipped_plain() -> CaptionGenerator:
    return load_generator(SHIPPED, half_weights=True, lexicon=SHIPPED_LEXICON)


@needs_shipped
def test_the_shipped_model_under_the_rules_writes_words_and_no_loops(shipped_plain):
    lexicon = shipped_plain.lexicon
    results = shipped_plain.generate_batch(shipped_requests())
    for req, result in zip(shipped_requests(), results, strict=True):
        for caption in result.captions:
            check_caption(caption.boxes, req, lexicon)


@needs_shipped
def test_the_shipped_model_gives_the_same_captions_with_guesses_and_the_kernel(shipped_plain):
    config = load_config(None, env={})
    fast = load_generator(
        SHIPPED, draft=config.draft_path, half_weights=True, kernel_dir=KERNEL_DIR, lexicon=SHIPPED_LEXICON
    )
    assert fast.draft is not None
    for req in shipped_requests():
        got = [c.boxes for c in fast.generate_batch([req])[0].captions]
        expected = [c.boxes for c in shipped_plain.generate_batch([req])[0].captions]
        assert got == expected, req


# ---- best of N ----------------------------------------------------------------------------------


def test_best_of_n_returns_the_candidates_best_first(tiny):
    for seed in range(4):
        req = GenerationRequest(
            "Ancient-Aliens", method="sample", temperature=1.8, seed=seed, n_boxes=2, **RULES
        )
        rows = tiny.generate_batch([dataclasses.replace(req, n=8)])[0].captions  # the same 8 draws
        best = tiny.generate_batch([dataclasses.replace(req, best_of=8)])[0].captions
        assert all(c.score is not None for c in rows + best)
        ranked: list[Caption] = []
        for c in sorted(rows, key=lambda c: c.score, reverse=True):  # type: ignore[arg-type,return-value]
            if c.boxes not in [r.boxes for r in ranked]:
                ranked.append(c)
        assert [c.boxes for c in best] == [c.boxes for c in ranked]
        assert best[0].score == max(c.score for c in rows)  # type: ignore[type-var]
        assert [c.score for c in best] == sorted((c.score for c in best), reverse=True)  # type: ignore[type-var]


def test_best_of_n_ranks_a_verbatim_training_caption_below_the_models_own(tiny_checkpoint):
    """The memorised caption is the likeliest draw; once the lexicon remembers it as a training
    caption, best-of-N answers with a caption of the model's own and keeps the copy for last."""
    memorised = SYNTHETIC_CAPTIONS["Ancient-Aliens"]
    plain = CaptionGenerator(load_checkpoint(tiny_checkpoint), lexicon=small_lexicon())
    lexicon = dataclasses.replace(small_lexicon(), seen=frozenset({caption_hash(memorised)}))
    remembering = CaptionGenerator(load_checkpoint(tiny_checkpoint), lexicon=lexicon)
    checked = 0
    for seed in range(6):
        req = GenerationRequest("Ancient-Aliens", method="sample", temperature=1.8, seed=seed, n_boxes=2)
        req = dataclasses.replace(req, best_of=8)
        before = [c.boxes for c in plain.generate_batch([req])[0].captions]
        after = [c.boxes for c in remembering.generate_batch([req])[0].captions]
        assert sorted(map(tuple, before)) == sorted(map(tuple, after))  # the same candidates
        if memorised in before and len(before) > 1:
            checked += 1
            assert before[0] == memorised  # by likelihood alone the copy would be served
            assert after[-1] == memorised and after[0] != memorised
            assert after[:-1] == [b for b in before if b != memorised]
    assert checked >= 2


def test_a_score_is_the_log_probability_per_symbol(tiny):
    req = GenerationRequest("Two-Buttons", method="greedy", n_boxes=3)
    caption = tiny.generate_batch([req])[0].captions[0]
    symbols = len("tabs") + 1 + len("spaces") + 1 + len("me") + 1  # two <sep> and <end>
    assert caption.score == pytest.approx(caption.logprob / symbols)


def test_rank_length_power_trades_per_symbol_likelihood_for_shortness(tiny):
    req = GenerationRequest("Ancient-Aliens", method="sample", temperature=1.8, seed=3, n_boxes=2, best_of=8)
    per_symbol = tiny.generate_batch([req])[0].captions
    for power in (0.0, 0.5):
        ranked = tiny.generate_batch([dataclasses.replace(req, rank_length_power=power)])[0].captions
        assert sorted(c.boxes for c in ranked) == sorted(c.boxes for c in per_symbol)  # same draws
        for c in ranked:
            same = next(p for p in per_symbol if p.boxes == c.boxes)
            symbols = round(same.logprob / same.score)  # per_symbol: score = logprob / symbols
            assert c.score == pytest.approx(c.logprob / symbols**power)
        assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True)
    check_request(dataclasses.replace(req, rank_length_power=0.5))
    with pytest.raises(InvalidRequest, match="rank_length_power"):
        check_request(dataclasses.replace(req, rank_length_power=2.0))


def test_best_of_counts_as_rows_and_is_checked():
    sample = GenerationRequest("x", method="sample", best_of=8)
    assert request_rows(sample) == 8
    assert request_rows(dataclasses.replace(sample, method="greedy")) == 1  # one caption whatever N
    assert request_rows(dataclasses.replace(sample, method="beam", beam_width=3)) == 3
    check_request(sample)
    for bad in (0, 65):
        with pytest.raises(InvalidRequest, match="best_of"):
            check_request(dataclasses.replace(sample, best_of=bad))


# ---- the service: settings, and 🔁 serving the next candidate ------------------------------------

ALICE = ChatContext("test", chat_id="chat-1", user_id="alice")
ADMIN = ChatContext("test", chat_id="chat-1", user_id="carol", is_admin=True)


class Candidates(ScriptedCaptions):
    """Sampled best-of-N requests get N numbered candidates, best first."""

    def answer(self, request: GenerationRequest) -> GenerationResult:
        if request.method != "sample" or request.best_of == 1:
            return super().answer(request)
        self.requests.append(request)
        draw = len(self.requests)
        return GenerationResult(
            [Caption([f"draw {draw} pick {k}", "box"], -1.0 - k, -0.1 * k) for k in range(request.best_of)]
        )


async def test_lexicon_and_best_of_are_server_settings_that_reach_the_model(tmp_path):
    model = Candidates()
    config = config_for_tests(tmp_path, user_burst=100, chat_burst=100)
    async with scripted_service(config, model) as service:
        settings = await service.get_settings(ALICE)
        assert settings.lexicon is True and settings.best_of == 8
        await service.make_meme(ALICE, "drake")
        assert (model.last.lexicon, model.last.block_repeats, model.last.best_of) == (True, True, 8)
        await service.set_settings(ADMIN, {"words": "off", "best": "3"})
        assert (await service.get_settings(ALICE)).best_of == 3
        await service.make_meme(ALICE, "drake")
        assert (model.last.lexicon, model.last.best_of) == (False, 3)
        await service.make_meme(ALICE, "drake", options=MemeOptions(method="greedy"))
        assert model.last.best_of == 1  # greedy decoding has one caption to give
        with pytest.raises(Exception, match="best_of must be a whole number from 1 to 16"):
            await service.set_settings(ADMIN, {"best_of": "17"})
        await service.set_settings(ADMIN, {"best_of": "default", "lexicon": "default"})
        assert (await service.get_settings(ALICE)).best_of == 8


async def test_reroll_serves_the_next_best_candidate_before_sampling_anew(tmp_path):
    model = Candidates()
    config = config_for_tests(tmp_path, user_burst=100, chat_burst=100)
    async with scripted_service(config, model) as service:
        await service.set_settings(ADMIN, {"best_of": "3"})
        first = await service.make_meme(ALICE, "drake", "pineapple")
        assert first.boxes == ["draw 1 pick 0", "box"] and len(model.requests) == 1
        stored = await service.storage.get_meme(first.id)
        assert stored.params[CANDIDATES] == [["draw 1 pick 1", "box"], ["draw 1 pick 2", "box"]]
        second = await service.reroll(ALICE, first.id)
        assert second.boxes == ["draw 1 pick 1", "box"] and len(model.requests) == 1  # no model call
        assert (await service.storage.get_meme(second.id)).params[REROLL_OF] == first.id
        # 🔁 on any meme of the chain takes the next one: never the same candidate twice.
        third = await service.reroll(ALICE, first.id)
        assert third.boxes == ["draw 1 pick 2", "box"] and third.prefix == "pineapple"
        fourth = await service.reroll(ALICE, second.id)  # all used: sampled anew
        assert fourth.boxes == ["draw 2 pick 0", "box"] and len(model.requests) == 2
        assert model.last.prefix == "pineapple" and model.last.method == "sample"
        fifth = await service.reroll(ALICE, fourth.id)
        assert fifth.boxes == ["draw 2 pick 1", "box"] and len(model.requests) == 2


async def test_two_rerolls_racing_for_the_last_candidate_are_each_charged_once(tmp_path):
    """Both 🔁 see one candidate left; one gets it, the other samples anew. The loser's turn
    is given back before the fresh caption charges it, so a user allowed exactly three memes
    (the first and the two rerolls) is not told to wait."""
    import asyncio

    model = Candidates()
    config = config_for_tests(tmp_path, user_burst=3, chat_burst=100)
    async with scripted_service(config, model) as service:
        await service.set_settings(ADMIN, {"best_of": "2"})
        first = await service.make_meme(ALICE, "drake")
        a, b = await asyncio.gather(service.reroll(ALICE, first.id), service.reroll(ALICE, first.id))
        assert sorted([a.boxes[0], b.boxes[0]]) == ["draw 1 pick 1", "draw 2 pick 0"]
        assert len(model.requests) == 2


async def test_candidates_with_a_banned_word_are_never_served(tmp_path):
    class Rude(Candidates):
        def answer(self, request: GenerationRequest) -> GenerationResult:
            result = super().answer(request)
            return GenerationResult(
                [result.captions[0], Caption(["you shit", "box"], -2.0, -0.5), *result.captions[1:]]
            )

    model = Rude()
    config = config_for_tests(tmp_path, user_burst=100, chat_burst=100)
    async with scripted_service(config, model) as service:
        await service.set_settings(ADMIN, {"best_of": "2"})
        first = await service.make_meme(ALICE, "drake")
        stored = await service.storage.get_meme(first.id)
        assert ["you shit", "box"] not in stored.params[CANDIDATES]
        again = await service.reroll(ALICE, first.id)
        assert "shit" not in again.text


async def test_storage_pops_list_items_of_a_memes_params_one_caller_at_a_time(tmp_path):
    import asyncio

    from bot.storage import NewMeme, Storage, UnknownMeme

    async with await Storage.open(tmp_path / "db.sqlite", "key") as storage:
        meme_id = await storage.record_meme(
            NewMeme(
                "test",
                "c",
                "u",
                catalog_template("drake"),
                "",
                ["a"],
                "sample",
                {"k": [1, 2, 3], "x": 1},
                "m",
            )
        )
        got = await asyncio.gather(*(storage.pop_param_item(meme_id, "k") for _ in range(5)))
        assert sorted(g for g in got if g is not None) == [1, 2, 3] and got.count(None) == 2
        assert (await storage.get_meme(meme_id)).params == {"x": 1}
        with pytest.raises(UnknownMeme):
            await storage.pop_param_item(meme_id + 1, "k")
        settings = await storage.set_settings("test", "c", lexicon=False, best_of=5)
        assert (settings["lexicon"], settings["best_of"]) == (False, 5)


def test_config_has_generation_defaults_for_the_rules():
    g = load_config(None, env={}).generation
    assert (g.lexicon, g.block_repeats, g.best_of) == (True, True, 8)


def test_config_refuses_a_best_of_out_of_range(tmp_path):
    from bot.settings import check_config_defaults
    from common.config import ConfigError

    path = tmp_path / "config.toml"
    path.write_text("[generation]\nbest_of = 0\n")
    with pytest.raises(ConfigError, match="best_of"):
        check_config_defaults(load_config(path, env={}))  # the range is the settings table's
    path.write_text("[generation]\nbest_of = 4\nlexicon = false\n")
    g = load_config(path, env={}).generation
    assert (g.best_of, g.lexicon) == (4, False)


# ---- no character more than MAX_RUN times in a row ----------------------------------------------


def test_no_character_comes_more_than_max_run_times_in_a_row(tiny):
    """Under block_repeats the symbol of a run of MAX_RUN is masked ("boi!!!!!!!!" stops at
    eight), a shorter run is left alone, the rule is off without block_repeats, and it never
    leaves a row with nothing to produce."""

    vocab = tiny.vocab
    a, bang = vocab.encode_boxes(["a"])[0], vocab.encode_boxes(["!"])[0]
    V = len(vocab.symbols)

    def allowed(generated: list[int], block_repeats: bool = True, only: list[int] | None = None) -> set[int]:
        request = GenerationRequest("Ancient-Aliens", method="sample", block_repeats=block_repeats)
        batch = tiny._batch([request])
        logits = torch.zeros(1, V)
        if only is not None:
            logits[:] = -math.inf
            logits[0, only] = 0.0
        logp = batch.constrain(
            logits, [Row(request=0, prompt=vocab.encode_boxes(["boi"]), generated=generated)]
        )
        return {i for i in range(V) if math.isfinite(logp[0, i].item())}

    assert a not in allowed([a] * MAX_RUN) and bang in allowed([a] * MAX_RUN)
    assert bang not in allowed([a] + [bang] * MAX_RUN)
    assert a in allowed([a] * (MAX_RUN - 1))  # one short of the limit
    assert a in allowed([a] * MAX_RUN, block_repeats=False)
    assert allowed([a] * MAX_RUN, only=[a]) == {a}  # the only way on stays open
