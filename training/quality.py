"""`memebot quality`: would people post these captions? Automatic figures anyone can rerun.

The report generates captions the way the bot serves them (the config's `[generation]` and
`[model]`, the template's box count from the catalog, the content filter's banned words) for
validation-split memes picked by a fixed-seed shuffle: every other meme from nothing, the others
completing the real caption's first word as if a user had typed it. Then it measures:

- non-words: share of generated words (the user's prefix words left out) that are not in the
  lexicon, the words seen at least LEXICON_MIN_COUNT times in training-split captions. A word
  the user typed counts as a word wherever it appears, and so does a number (digits only);
- repeats: share of captions with a word 3-gram twice, or two non-empty boxes with the same text;
- copies: share of captions identical to a training-split caption (boxes compared in order);
- distinct-2: distinct word bigrams / word bigrams, over all generated captions;
- length: median caption length, against the real captions of the same memes;
- discriminator: 5-fold cross-validated accuracy of a character 1-4-gram TF-IDF logistic
  regression telling the real captions of the sampled memes from the generated ones (50%: it
  cannot tell them apart; 100%: every caption gives itself away).

Words, everywhere here (lexicon, non-words, repeats, distinct-2): the caption lowercased, then
runs of letters and digits with inner apostrophes kept (`WORD`: "don't" is one word, "x-men" is
two, quotes around a word are not part of it), taken across box breaks in box order. A caption's
length counts the characters of its boxes plus one per box break (the model's symbols, without
<end>); empty boxes at the end (a generated caption is padded to the template's box count) are
left out of lengths, copies and the discriminator's text, for generated and real captions alike.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.lexicon import MIN_COUNT, count_words, is_number, template_words, words
from model.requests import GenerationRequest
from model.vocab import SEP, Vocab

if TYPE_CHECKING:
    from common.catalog import Catalog
    from common.config import Config
    from common.template import CaptionPlan, Template
    from model.pool import BatchGenerator
    from training.dataset import PackedDataset

# What a word is, and how often training captions must use one, are the decoder's own
# (model/lexicon.py): the report counts exactly what the lexicon rule enforces.
LEXICON_MIN_COUNT = MIN_COUNT
DISCRIMINATOR_FOLDS = 5
BOX_JOIN = "\n"  # between boxes in joined caption texts: no character of the vocabulary

Boxes = Sequence[str]


# ---- the metrics: plain functions of texts ------------------------------------------------


def caption_words(boxes: Boxes) -> list[str]:
    """A caption's words in order, across its boxes."""
    return [w for box in boxes for w in words(box)]


def trimmed(boxes: Boxes) -> list[str]:
    """Box texts stripped, without the empty boxes at the end."""
    out = [b.strip() for b in boxes]
    while out and not out[-1]:
        out.pop()
    return out


def caption_key(boxes: Boxes) -> str:
    """A caption as one string, for copies and the discriminator."""
    return BOX_JOIN.join(trimmed(boxes))


def caption_length(boxes: Boxes) -> int:
    """Characters of the boxes plus one per box break (trailing empty boxes left out)."""
    return len(caption_key(boxes))


def build_lexicon(texts: Iterable[str], min_count: int = LEXICON_MIN_COUNT) -> set[str]:
    """The words seen at least `min_count` times in `texts` (numbers too: they count as words)."""
    counts = count_words(texts)
    return {w for w, c in counts.items() if c >= min_count}


def non_word_rate(
    lexicon: set[str] | frozenset[str],
    captions: Sequence[Boxes],
    prefixes: Sequence[str],
    templates: Sequence[str] | None = None,
) -> float:
    """Share of generated words not in `lexicon`. The words of each caption's prefix (what the
    user typed, `|` between boxes) are taken out of its words once each and are not counted;
    they, numbers and the words of the caption's template name (`templates`, as the decoder
    allows them) count as words if the model writes them."""
    if len(captions) != len(prefixes) or (templates is not None and len(templates) != len(captions)):
        raise ValueError(f"{len(captions)} captions but {len(prefixes)} prefixes")
    total = bad = 0
    for k, (boxes, prefix) in enumerate(zip(captions, prefixes, strict=True)):
        own = words(prefix.replace("|", " "))
        generated = caption_words(boxes)
        for w in own:
            if w in generated:
                generated.remove(w)  # the first occurrence: where the prefix put it
        allowed = set(own) | set(template_words(templates[k]) if templates is not None else ())
        total += len(generated)
        bad += sum(1 for w in generated if w not in lexicon and w not in allowed and not is_number(w))
    return bad / total if total else 0.0


def has_repeat(boxes: Boxes) -> bool:
    """A word 3-gram twice in the caption, or two non-empty boxes with the same text."""
    texts = [b.strip() for b in boxes if b.strip()]
    if len(set(texts)) < len(texts):
        return True
    ws = caption_words(boxes)
    grams = list(zip(ws, ws[1:], ws[2:], strict=False))
    return len(set(grams)) < len(grams)


def repeat_rate(captions: Sequence[Boxes]) -> float:
    return sum(has_repeat(c) for c in captions) / len(captions) if captions else 0.0


def copy_rate(training: set[str] | frozenset[str], captions: Sequence[Boxes]) -> float:
    """Share of captions whose `caption_key` is in `training` (the training captions' keys)."""
    return sum(caption_key(c) in training for c in captions) / len(captions) if captions else 0.0


def distinct_2(captions: Sequence[Boxes]) -> float:
    """Distinct word bigrams / word bigrams, bigrams taken within each caption."""
    bigrams = []
    for boxes in captions:
        ws = caption_words(boxes)
        bigrams.extend(zip(ws, ws[1:], strict=False))
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def median_length(captions: Sequence[Boxes]) -> float:
    return float(statistics.median(caption_length(c) for c in captions)) if captions else 0.0


def discriminator_accuracy(
    real: Sequence[str], generated: Sequence[str], folds: int = DISCRIMINATOR_FOLDS
) -> float:
    """Cross-validated accuracy of a character 1-4-gram TF-IDF + logistic regression telling
    `real` texts (label 1) from `generated` ones (label 0). Deterministic: fixed folds
    (stratified, shuffled with seed 0) and a deterministic solver. Fewer folds when a class
    has fewer texts than `folds`; at least two texts of each are needed."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline

    folds = min(folds, len(real), len(generated))
    if folds < 2:
        raise ValueError("the discriminator needs at least two real and two generated captions")
    texts = [t.lower() for t in (*real, *generated)]
    labels = np.array([1] * len(real) + [0] * len(generated))
    pipeline = make_pipeline(
        TfidfVectorizer(analyzer="char", ngram_range=(1, 4), sublinear_tf=True, lowercase=False),
        LogisticRegression(C=1.0, max_iter=2000, random_state=0),
    )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    return float(cross_val_score(pipeline, texts, labels, cv=splitter, scoring="accuracy").mean())


# ---- the report ---------------------------------------------------------------------------


@dataclass
class QualityReport:
    """One model's figures (rates are fractions; the printed lines show percentages)."""

    model_id: str
    checkpoint: str
    captions: int
    non_words: float
    repeats: float
    copies: float
    distinct_2: float
    length_median: float
    people_length_median: float
    discriminator: float
    seconds: float = 0.0  # generating the captions
    people: dict[str, float] = field(default_factory=dict)  # the same figures for the real captions
    examples: list[dict[str, Any]] = field(default_factory=list)

    def lines(self, baseline: QualityReport | None = None) -> list[str]:
        """The printed report, one figure a line; with a baseline, its figure in brackets after."""

        def pct(x: float) -> str:
            return f"{100 * x:.1f}%"

        def num(x: float) -> str:
            return f"{x:.3f}"

        def chars(x: float) -> str:
            return f"{x:g}"

        rows = [
            ("non-words", pct(self.non_words), baseline and pct(baseline.non_words)),
            ("repeats", pct(self.repeats), baseline and pct(baseline.repeats)),
            ("copies", pct(self.copies), baseline and pct(baseline.copies)),
            ("distinct-2", num(self.distinct_2), baseline and num(baseline.distinct_2)),
            (
                "length",
                f"median {chars(self.length_median)} chars (people {chars(self.people_length_median)})",
                baseline and f"median {chars(baseline.length_median)} chars",
            ),
            ("discriminator", pct(self.discriminator), baseline and pct(baseline.discriminator)),
        ]
        return [f"{name}: {value}" + (f" (baseline {base})" if base else "") for name, value, base in rows]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- what the report is computed on -------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """A validation meme and how its caption is asked for."""

    index: int  # the meme's index in the dataset
    template: str  # dataset name
    boxes: tuple[str, ...]  # the person's caption
    prefix: str  # what the "user" typed: "" or the real caption's first word


@dataclass
class TrainingReference:
    """What the training split says a word and a caption are."""

    lexicon: frozenset[str]
    captions: frozenset[str]  # caption_key of every training caption


def caption_texts(dataset: PackedDataset, indices: np.ndarray, vocab: Vocab | None = None) -> list[str]:
    """The memes' captions as `caption_key`-style strings (boxes joined by BOX_JOIN), decoded
    in one go: 350k captions in about a second."""
    vocab = vocab or Vocab()
    codes = np.zeros(256, dtype=np.uint8)
    for i, s in enumerate(vocab.symbols):
        if len(s) == 1:
            codes[i] = ord(s)
    codes[SEP] = ord(BOX_JOIN)
    text = codes[dataset.tokens].tobytes().decode("ascii")
    starts, ends = dataset.offsets[indices], dataset.offsets[np.asarray(indices) + 1]
    return [text[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


def training_reference(dataset: PackedDataset, min_count: int = LEXICON_MIN_COUNT) -> TrainingReference:
    texts = caption_texts(dataset, dataset.split(val=False))
    counts = Counter(words("\n".join(texts)))
    keys = frozenset(caption_key(t.split(BOX_JOIN)) for t in texts)
    return TrainingReference(frozenset(w for w, c in counts.items() if c >= min_count), keys)


def first_word_prefix(boxes: Boxes) -> str:
    """The real caption's first word as a user would type it: `|` for each empty box before it."""
    for k, box in enumerate(boxes):
        parts = box.split()
        if parts:
            return "|" * k + parts[0]
    return ""


def pick_samples(dataset: PackedDataset, n: int, seed: int = 0) -> list[Sample]:
    """n validation memes by a fixed-seed shuffle; every second one gets its first word as prefix."""
    chosen = np.random.default_rng(seed).permutation(dataset.split(val=True))[:n]
    texts = caption_texts(dataset, chosen)
    samples = []
    for k, (i, text) in enumerate(zip(chosen.tolist(), texts, strict=True)):
        boxes = tuple(text.split(BOX_JOIN))
        prefix = first_word_prefix(boxes) if k % 2 else ""
        samples.append(Sample(int(i), dataset.templates[dataset.template_index[i]], boxes, prefix))
    return samples


def served_request(
    config: Config,
    n_boxes: int,
    template: str,
    prefix: str,
    seed: int,
    banned: tuple[str, ...] = (),
    fill_boxes: bool = False,
) -> GenerationRequest:
    """The request the bot makes for a meme in a chat without settings of its own (as
    MemeService._request builds it), seeded so the report can be rerun. Every `[generation]`
    setting that is also a GenerationRequest field is passed on by name, so a decoding setting
    added to both (method, temperature, ..., and any later one) is served here too."""
    wanted = {f.name for f in fields(GenerationRequest)}
    settings = {k: v for k, v in asdict(config.generation).items() if k in wanted}
    return GenerationRequest(
        **settings,
        template=template,
        prefix=prefix,
        banned_words=banned,
        n_boxes=n_boxes,
        seed=seed,
        fill_boxes=fill_boxes,
    )


def planned_request(config: Config, template: Template, plan: CaptionPlan, seed: int) -> GenerationRequest:
    """The served request for a meme on `template` as its caption plan asks it
    (Template.caption_plan: which template the model writes for, from what, how many boxes)."""
    n_boxes = plan.model_boxes(len(template.boxes))
    return served_request(config, n_boxes, plan.model_template, plan.prefix, seed, fill_boxes=plan.fill_boxes)


def served_requests(
    config: Config, catalog: Catalog, samples: Sequence[Sample], seed: int, any_picture: bool = False
) -> list[GenerationRequest]:
    """The requests the bot would make for `samples`. any_picture: as for a user's own picture,
    which the model knows no template of (the "any picture" conditioning, template id 0), with
    its two lines, both written (GenerationRequest.fill_boxes)."""
    from common.content_filter import ContentFilter

    banned = ContentFilter.from_config(config.filter).banned if config.filter.enabled else ()
    boxes_of = {t.dataset_name: len(t.boxes) for t in catalog.templates}
    return [
        served_request(
            config,
            2 if any_picture else boxes_of.get(s.template, 0),
            "" if any_picture else s.template,
            s.prefix,
            seed * 1_000_003 + k,
            banned,
            fill_boxes=any_picture,
        )
        for k, s in enumerate(samples)
    ]


def load_served_generator(config: Config, checkpoint: Path) -> BatchGenerator:
    """The generator `memebot run` would load for `checkpoint`: the factory of the pool built
    as bot.app.start_pool builds it from the config's [model] settings (its first device), with
    the speculative table and the word lexicon when their files are there. (Not bot.app itself:
    training/ does not import the bot's wiring.)"""
    from model.pool import ModelPool

    def present(path: Path | None, what: str) -> Path | None:
        if path is not None and not path.exists():
            print(f"memebot quality: no {what} at {path}: decoding without it", file=sys.stderr)
            return None
        return path

    draft = present(config.draft_path, "draft table")
    lexicon = present(config.lexicon_path, "word lexicon")
    pool = ModelPool.from_config(config.model, checkpoint, draft, config.kernel_dir, lexicon=lexicon)
    return pool.factories[0]()


def generate_all(
    generator: BatchGenerator,
    requests: Sequence[GenerationRequest],
    max_rows: int,
    progress: Callable[[int], None] | None = None,
) -> list[list[str]]:
    """Each request's first caption's boxes, decoded in batches of at most `max_rows` rows (the
    pool's max_batch). Seeded requests decode the same in any batch."""
    from model.requests import request_rows

    out: list[list[str]] = []
    start = 0
    while start < len(requests):
        end, rows = start, 0
        while end < len(requests) and (end == start or rows + request_rows(requests[end]) <= max_rows):
            rows += request_rows(requests[end])
            end += 1
        for result in generator.generate_batch(list(requests[start:end])):
            out.append(list(result.captions[0].boxes) if result.captions else [])
        start = end
        if progress is not None:
            progress(len(out))
    return out


def measure(
    generated: Sequence[Boxes],
    samples: Sequence[Sample],
    reference: TrainingReference,
    *,
    model_id: str = "",
    checkpoint: str = "",
    seconds: float = 0.0,
    examples: int = 10,
) -> QualityReport:
    """The figures for captions generated for `samples` (in the same order)."""
    people = [list(s.boxes) for s in samples]
    prefixes = [s.prefix for s in samples]
    real_texts = [caption_key(b) for b in people]
    return QualityReport(
        model_id=model_id,
        checkpoint=checkpoint,
        captions=len(generated),
        non_words=non_word_rate(reference.lexicon, generated, prefixes, [s.template for s in samples]),
        repeats=repeat_rate(generated),
        copies=copy_rate(reference.captions, generated),
        distinct_2=distinct_2(generated),
        length_median=median_length(generated),
        people_length_median=median_length(people),
        discriminator=discriminator_accuracy(real_texts, [caption_key(b) for b in generated]),
        seconds=round(seconds, 2),
        people={
            "non_words": non_word_rate(reference.lexicon, people, [""] * len(people)),
            "repeats": repeat_rate(people),
            "copies": copy_rate(reference.captions, people),
            "distinct_2": distinct_2(people),
        },
        examples=[
            {"template": s.template, "prefix": s.prefix, "caption": list(g), "person": list(s.boxes)}
            for s, g in list(zip(samples, generated, strict=True))[:examples]
        ],
    )


# ---- blind pairs --------------------------------------------------------------------------


def key_path(path: Path) -> Path:
    return path.with_name(path.name + ".key.json")


def write_pairs(
    path: Path,
    samples: Sequence[Sample],
    generated: Sequence[Boxes],
    seed: int,
    template_names: dict[str, str] | None = None,
    model_id: str = "",
) -> Path:
    """A readable file of blind pairs (a person's caption and ours for the same meme, in an order
    shuffled with `seed`) and the answer key beside it (`<path>.key.json`). Returns the key's path."""
    names = template_names or {}
    rng = random.Random(seed)
    lines = [
        "# Which caption did a person write?",
        "",
        "Each pair is two captions for the same meme template: one written by a person on imgflip,",
        "one by the model. Say which one (A or B) is the person's, and score each from 1 (no one would",
        "post it) to 5 (funny and makes sense). Boxes are separated by ` | `.",
        "",
    ]
    key = []
    for k, (sample, ours) in enumerate(zip(samples, generated, strict=True), start=1):
        person = trimmed(sample.boxes)
        model = trimmed(ours)
        person_first = rng.random() < 0.5
        a, b = (person, model) if person_first else (model, person)
        name = names.get(sample.template, sample.template.replace("-", " "))
        lines += [f"## {k}. {name}", "", f"- A: {' | '.join(a).lower()}", f"- B: {' | '.join(b).lower()}", ""]
        key.append(
            {
                "pair": k,
                "person": "A" if person_first else "B",
                "model": "B" if person_first else "A",
                "template": sample.template,
                "meme_index": sample.index,
                "prefix": sample.prefix,
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    kp = key_path(path)
    kp.write_text(json.dumps({"model_id": model_id, "seed": seed, "pairs": key}, indent=2) + "\n")
    return kp


@dataclass
class Judged:
    """What a reader said about blind pairs (`--pairs`), scored against the key."""

    pairs: int
    fooled: int  # pairs where the reader took ours for the person's
    ours: float  # mean score 1-5 of our captions
    people: float  # mean score 1-5 of people's
    fooled_pairs: tuple[int, ...] = ()  # which pairs (their numbers in the file)

    def lines(self) -> list[str]:
        return [
            f"taken for the person's: {self.fooled} of {self.pairs}",
            f"score: ours {self.ours:.2f}, people {self.people:.2f}",
        ]


def score_judgments(key: dict[str, Any], answers: Sequence[dict[str, Any]]) -> Judged:
    """`answers`: one {"pair": k, "person": "A" or "B", "A": score, "B": score} per pair, as a
    reader gives them; pairs the reader skipped are left out of every figure."""
    truth = {p["pair"]: p for p in key["pairs"]}
    fooled, ours, people = [], [], []
    for a in answers:
        pair = truth.get(int(a["pair"]))
        if pair is None:
            raise ValueError(f"pair {a['pair']} is not in the key")
        if str(a["person"]).strip().upper() == pair["model"]:
            fooled.append(int(a["pair"]))
        ours.append(float(a[pair["model"]]))
        people.append(float(a[pair["person"]]))
    n = len(ours)
    return Judged(n, len(fooled), sum(ours) / max(n, 1), sum(people) / max(n, 1), tuple(sorted(fooled)))


def pooled_lines(readers: Sequence[Judged]) -> list[str]:
    """Several readers of the same pairs, together: the figures over all their answers (the
    README's "N of 144"), which pairs fooled whom, and how often the readers agreed. A reader
    who answered every pair weighs as much as any other."""
    n = sum(r.pairs for r in readers)
    fooled = sum(r.fooled for r in readers)
    ours = sum(r.ours * r.pairs for r in readers) / max(n, 1)
    people = sum(r.people * r.pairs for r in readers) / max(n, 1)
    # Readers are consistent pair by pair: which captions pass for a person's says more than
    # the count does (the same pairs fool most readers of a batch).
    by_pair = Counter(p for r in readers for p in r.fooled_pairs)
    fooling = ", ".join(f"#{p} by {c}" for p, c in sorted(by_pair.items(), key=lambda x: (-x[1], x[0])))
    answered = max((r.pairs for r in readers), default=0)
    split = sum(1 for c in by_pair.values() if c < len(readers))
    return [
        f"all {len(readers)} readers: taken for the person's: {fooled} of {n} ({100 * fooled / max(n, 1):.0f}%)",
        f"all {len(readers)} readers: score: ours {ours:.2f}, people {people:.2f}",
        f"pairs taken for the person's: {fooling or 'none'}",
        f"readers agreed on {answered - split} of {answered} pairs",
    ]


# ---- the command --------------------------------------------------------------------------
