"""What a caller asks the model for and what it gets back: plain data, no torch."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DecodingMethod:
    """A way of choosing a caption's symbols, as callers ask for it by name."""

    name: str  # GenerationRequest.method
    help: str  # one line for people choosing it (a command's --help, a chat's settings)
    # The GenerationRequest fields that change its captions beyond COMMON_PARAMETERS, which every
    # method reads: a front end offers these with it and can leave the others out.
    parameters: tuple[str, ...]


# What every method reads: what to caption, how long, how many, and the rules on words.
COMMON_PARAMETERS = (
    "template",
    "prefix",
    "max_length",
    "n",
    "banned_words",
    "n_boxes",
    "fill_boxes",
    "lexicon",
    "block_repeats",
)
# The decoding methods, defined once: the generator, the pool's checks, the command line and
# the benchmarks take their names from here. model/generate.py decodes each (DECODERS).
DECODING_METHODS = (
    DecodingMethod("greedy", "the single most likely caption", ()),
    DecodingMethod(
        "sample",
        "varied, a bit random",
        ("temperature", "top_k", "top_p", "seed", "best_of", "rank_length_power"),
    ),
    DecodingMethod("beam", "the best of several candidates", ("beam_width",)),
)
METHODS = tuple(m.name for m in DECODING_METHODS)


@dataclass(frozen=True)
class GenerationRequest:
    # The template's dataset name (e.g. "Drake-Hotline-Bling"); a name the model was not
    # trained on is generated with the shared "unknown template" embedding.
    template: str
    prefix: str = ""  # raw user text; `|` starts the next box
    method: str = "sample"
    temperature: float = 0.8
    top_k: int = 0  # 0 = off
    top_p: float = 0.95  # 1.0 = off
    beam_width: int = 3
    max_length: int = 120  # symbols after the prefix, <sep> included
    n: int = 1  # captions wanted (beam: the n best beams)
    seed: int | None = None  # fixes sampling, alone or inside any batch
    banned_words: tuple[str, ...] = ()  # words decoding must never complete
    n_boxes: int = 0  # the template's box count: at most n_boxes - 1 <sep>; 0 = no limit
    # Every one of the n_boxes boxes gets text: no <end> before the last box, no box left
    # blank (a picture's two lines, the panels of a template the model has no captions of).
    fill_boxes: bool = False
    # Words only from the generator's lexicon, the prefix's words, numbers and the template
    # name's words (model/lexicon.py); ignored by a generator that has no lexicon loaded.
    lexicon: bool = False
    block_repeats: bool = False  # no word 3-gram twice, no box twice, no character run past MAX_RUN
    # Sampling: decode max(n, best_of) candidates in one batch and return them all (distinct
    # ones), best first by `Caption.score`. Greedy and beam requests ignore it.
    best_of: int = 1
    # Best-of-N ranks by log-probability / length**rank_length_power: 1 is the mean per symbol;
    # lower leans to shorter captions, which readers found more convincing (README, Captions).
    rank_length_power: float = 1.0


@dataclass(frozen=True)
class Caption:
    boxes: list[str]  # normalised box texts, prefix included
    logprob: float  # total log-probability of the generated symbols
    # What best-of-N ranks by: greedy and sampling, the log-probability of the generated symbols
    # (<end> included) / their number**rank_length_power; beam search, its length-penalised beam
    # score. None: not scored.
    score: float | None = None

    @property
    def text(self) -> str:
        return " | ".join(self.boxes)


@dataclass(frozen=True)
class GenerationResult:
    captions: list[Caption] = field(default_factory=list)


# Called from the decoding thread with (index of the request in its batch, its result) as soon
# as that request is done, before the rest of the batch is: a short caption need not wait for
# the longest one decoded beside it.
ResultCallback = Callable[[int, GenerationResult], None]

# Asked from the decoding thread, at every pass, for each request not yet done: True once request
# i's caller has given up (timed out, or its interaction expired). Its rows then leave the batch
# and it gets an empty result that nobody reads.
Abandoned = Callable[[int], bool]


def request_rows(request: GenerationRequest) -> int:
    """How many rows a request decodes, its size in a batch: `n` for greedy, the larger of `n`
    and `best_of` for sampling, `beam_width` for beam search."""
    if request.method == "beam":
        return max(1, request.beam_width)
    return max(1, request.n, request.best_of if request.method == "sample" else 1)


# ---- picking the template from the text (model/pick.py scores, the pool runs it) --------------


@dataclass(frozen=True)
class ScoringRequest:
    """How likely `text` is as the start of a caption of each template: one teacher-forced pass
    with a row per template (model/pick.py)."""

    text: str  # raw user text, `|` between boxes, normalised as a prefix is
    templates: tuple[str, ...] = ()  # dataset names to score; () = every template the model knows


@dataclass(frozen=True)
class TemplateScores:
    """Templates ranked by how likely the text is under each, best first."""

    templates: tuple[str, ...]  # dataset names, best first; templates the model does not know are left out
    # log P(text | template) in nats (model/pick.py says why the sum, not the mean), descending.
    scores: tuple[float, ...]

    @classmethod
    def ranked(cls, scores: dict[str, float]) -> TemplateScores:
        """Sorted best first; equal scores keep the order they were given in."""
        order = sorted(scores, key=lambda name: -scores[name])
        return cls(tuple(order), tuple(scores[name] for name in order))

    def probabilities(self) -> list[float]:
        """P(template | text) among the templates scored, if each was as likely beforehand:
        the softmax of the scores, in the same order."""
        return softmax(self.scores)

    def best(self, n: int) -> list[tuple[str, float]]:
        return list(zip(self.templates[:n], self.scores[:n], strict=True))


# The choice among the best few rather than always the best: a text that fits three templates
# about equally should not always get the same one, and the user can ask for another.
PICK_AMONG = 3


def choose_template(scores: TemplateScores, rng: random.Random, among: int = PICK_AMONG) -> str:
    """One of the `among` best templates, drawn with probability softmax(their scores): the
    posterior among them. ValueError when nothing was scored."""
    if not scores.templates:
        raise ValueError("no template was scored: none of them is known to the model")
    top = scores.scores[: max(1, among)]
    return rng.choices(scores.templates[: len(top)], weights=softmax(top))[0]


def softmax(scores: Sequence[float]) -> list[float]:
    if not scores:
        return []
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]  # the best is exp(0) = 1: never all zero
    total = sum(weights)
    return [w / total for w in weights]
