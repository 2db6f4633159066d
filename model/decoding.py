"""What every decoding method shares: a `Row` per caption being decoded, and the `Batch` of
requests one method decodes together, which starts the rows, constrains each step's choice,
moves a row on by a symbol and turns a finished row into its caption.

Constraints applied to the logits at every step, for every method:
- at most n_boxes - 1 <sep>; with `fill_boxes`, exactly that many: before the last box
  <end>'s probability goes to <sep> (the box ends where the caption would have), and no box is
  closed (nor the caption ended) while it is blank;
- a banned word is never completed: while the current word spells one, every token that
  would end the word (space, punctuation, <sep>, <end>) is masked, so the word can only
  grow into something else;
- <pad> and <start> are never produced.

Word rules, per request (model/lexicon.py), applied the same way for every method and
checked against the same masks when speculative guesses are verified:
- `lexicon`: a word is spelled only along the lexicon's character trie (plus the prefix's and
  the template name's words; numbers always) and ends only where a word of it ends;
- `block_repeats`: a word that would complete a word 3-gram already in the caption cannot end,
  and a box equal to an earlier one cannot be closed; no character comes more than MAX_RUN
  times in a row (unless nothing else may come).
A caption the length cap cuts where it could not have ended loses its unfinished last word.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from model.draft import DraftTable
from model.lexicon import BatchRules, Lexicon, WordState
from model.requests import Caption, GenerationRequest
from model.vocab import END, PAD, SEP, START, Vocab, normalize_user_text

MAX_SYMBOLS = 199  # the data filter keeps captions under 200 symbols; the models never saw longer
# Under block_repeats a character comes at most this many times in a row. Served captions ran to
# 50 a's or 80 !'s ("boi!!!!..."), a tell readers named; 99.1% of people's training captions
# have no run longer ("aaaaaand it's gone" has six).
MAX_RUN = 8

# One network pass over one token per row: (tokens [R], state) -> (logits [R, V], state).
Step = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
# Reading the prompts: (template names, left-padded prompts [R, W], longest caption wanted) ->
# (last logits [R, V], state).
Prefill = Callable[[list[str], torch.Tensor, int], tuple[torch.Tensor, Any]]


@dataclass(kw_only=True)
class Row:
    """One caption being decoded."""

    request: int  # index of its request in the batch
    prompt: list[int]  # prefix ids (no <start>)
    generated: list[int] = field(default_factory=list)
    logprob: float = 0.0
    seps: int = 0
    word: str = ""  # the word being spelled, for the banned-word rule
    done: bool = False
    # Sampling: the uniform number that picks generated token k is noise[k], drawn up front
    # from the request's seed, so a caption never depends on its batch or on how many
    # tokens a decoding pass produced.
    noise: list[float] | None = None
    ws: WordState | None = None  # where it stands with the word rules; None: no rule is on


def prompt_ids(vocab: Vocab, request: GenerationRequest) -> list[int]:
    """The request's prefix as the caption's first symbols (no <start>)."""
    boxes = normalize_user_text(request.prefix) if request.prefix else [""]
    if request.n_boxes and len(boxes) > request.n_boxes:
        # Text typed past the last box joins it, as the renderer would show it.
        boxes = boxes[: request.n_boxes - 1] + [" ".join(b for b in boxes[request.n_boxes - 1 :] if b)]
    if boxes[-1] and not boxes[-1].endswith(" "):
        # A prefix is whole words: "pineapple on" continues with a new word, not "onion".
        boxes[-1] += " "
    return vocab.encode_boxes(boxes)[: MAX_SYMBOLS - 1]


@dataclass
class Batch:
    """The requests one decoding method works on together (numbered from 0 here, whatever
    their places in the caller's batch), with the network that decodes them and the tables
    it decodes with."""

    requests: Sequence[GenerationRequest]
    vocab: Vocab
    rules: BatchRules  # the requests' word rules
    step: Step
    prefill: Prefill
    device: torch.device
    draft: DraftTable | None = None  # guesses of the next characters (model/speculation.py)
    lexicon: Lexicon | None = None  # the loaded word lexicon, if any (model/lexicon.py)

    def __post_init__(self) -> None:
        symbols = self.vocab.symbols
        # Letters, digits and the apostrophe spell words; any other character, <sep> and <end> end one.
        self.in_word = [len(s) == 1 and (s.isalnum() or s == "'") for s in symbols]
        self.word_end = torch.tensor(
            [i for i, s in enumerate(symbols) if i in (SEP, END) or (len(s) == 1 and not self.in_word[i])],
            device=self.device,
        )
        self.never = torch.tensor([PAD, START], device=self.device)
        self.space = symbols.index(" ")

    def start(self, rows: list[Row]) -> tuple[torch.Tensor, Any]:
        """Prefill all rows' prompts (left-padded) -> last logits [R, V] and the model state."""
        width = max(len(r.prompt) for r in rows) + 1
        tokens = torch.full((len(rows), width), PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            seq = [START, *row.prompt]
            tokens[i, width - len(seq) :] = torch.tensor(seq)
            row.seps = row.prompt.count(SEP)
            row.word = self._last_word(row.prompt)
            row.ws = self.rules.state(row.request, row.prompt)
        longest = min(max(r.max_length for r in self.requests), MAX_SYMBOLS)
        return self.prefill([self.requests[r.request].template for r in rows], tokens, longest)

    def _last_word(self, ids: list[int]) -> str:
        word = ""
        for i in ids:
            word = word + self.vocab.symbols[i] if self.in_word[i] else ""
        return word

    def constrain(self, logits: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
        """Mask what a row must not produce next. logits [R, V] -> log-probabilities [R, V]."""
        logits = logits.float().clone()
        logits[:, self.never] = -math.inf
        # Row lists per rule, then one tensor op per rule: a wide batch has dozens of rows.
        no_sep, no_end, end_box, in_banned, at_cap, runs = [], [], [], [], [], []
        ruled: list[int] = []  # rows under word rules (model/lexicon.py)
        for i, row in enumerate(rows):
            req = self.requests[row.request]
            if req.n_boxes and row.seps >= req.n_boxes - 1:
                no_sep.append(i)
            if req.fill_boxes and req.n_boxes:
                if self._box_is_blank(row):
                    no_sep.append(i)
                    no_end.append(i)
                elif row.seps < req.n_boxes - 1:
                    end_box.append(i)
            if req.banned_words and row.word and row.word in req.banned_words:
                in_banned.append(i)
            if len(row.prompt) + len(row.generated) >= MAX_SYMBOLS - 1:
                at_cap.append(i)
            elif row.ws is not None:
                ruled.append(i)
            if req.block_repeats:
                symbol = self._run_at_limit(row)
                if symbol is not None:
                    runs.append((i, symbol))
        if end_box:
            # Where the network would end the caption with boxes still to fill, it ends the box:
            # <end>'s probability goes to <sep> (masked, it would go to whatever came next, most
            # often punctuation: "?!?!?!" until the length cap).
            logits[end_box, SEP] = torch.logaddexp(logits[end_box, SEP], logits[end_box, END])
            logits[end_box, END] = -math.inf
        if no_sep:
            logits[no_sep, SEP] = -math.inf
        if no_end:
            logits[no_end, END] = -math.inf
        if in_banned:
            logits[torch.tensor(in_banned)[:, None], self.word_end[None, :]] = -math.inf
        if ruled:
            self.rules.mask(
                logits,
                ruled,
                [rows[i].request for i in ruled],
                [rows[i].ws for i in ruled],  # type: ignore[misc]
            )
        for i, symbol in runs:
            if torch.isfinite(logits[i]).sum() > 1 or not torch.isfinite(logits[i, symbol]):
                logits[i, symbol] = -math.inf  # never the only way on: a word may need it
        if at_cap:
            logits[at_cap] = -math.inf  # only <end> is left
            logits[at_cap, END] = 0.0
        return torch.log_softmax(logits, dim=-1)

    def _box_is_blank(self, row: Row) -> bool:
        """Nothing but spaces since the row's last <sep> (or its start)."""
        for ids in (row.generated, row.prompt):
            for token in reversed(ids):
                if token == SEP:
                    return True
                if token != self.space:
                    return False
        return True

    @staticmethod
    def _run_at_limit(row: Row) -> int | None:
        """The symbol the row's last MAX_RUN symbols all are, if they are one symbol."""
        tail = row.generated[-MAX_RUN:]
        if len(tail) < MAX_RUN:
            tail = (row.prompt + row.generated)[-MAX_RUN:]
        if len(tail) == MAX_RUN and tail.count(tail[0]) == MAX_RUN:
            return tail[0]
        return None

    def advance(self, row: Row, token: int, logprob: float) -> None:
        """Row takes `token`, whose log-probability is `logprob`."""
        row.generated.append(token)
        row.logprob += logprob
        if token == END or len(row.generated) >= self.requests[row.request].max_length:
            row.done = True
        if token == SEP:
            row.seps += 1
        row.word = row.word + self.vocab.symbols[token] if self.in_word[token] else ""
        if row.ws is not None:
            row.ws = self.rules.advance(row.request, row.ws, token)

    def extend(self, parent: Row, token: int, score: float) -> Row:
        """A new row: `parent` (left as it is) followed by `token`, scored `score`."""
        row = Row(
            request=parent.request,
            prompt=parent.prompt,
            generated=list(parent.generated),
            seps=parent.seps,
            word=parent.word,
            noise=parent.noise,
            ws=parent.ws,
        )
        self.advance(row, token, 0.0)
        row.logprob = score
        return row

    def caption(self, row: Row, score: float | None = None) -> Caption:
        """A finished row's caption. Scored by its log-probability per symbol (to the request's
        rank_length_power), or by `score` when given (beam search's own)."""
        request = self.requests[row.request]
        ids = row.prompt + row.generated
        if request.banned_words and row.word in request.banned_words and END not in row.generated:
            ids = ids[: len(ids) - len(row.word)]  # stopped by the length cap mid-word: drop the word
        elif row.ws is not None:
            # Stopped by a length cap where the word rules would not have let it end.
            ended = ids[:-1] if ids and ids[-1] == END else ids
            ids = self.rules.trim(row.request, ended, len(row.prompt), row.ws)
        boxes = [b.strip() for b in self.vocab.decode_boxes(ids)]
        if request.n_boxes:
            boxes = (boxes + [""] * request.n_boxes)[: request.n_boxes]
        if score is None:
            length = max(1, len(row.generated)) ** request.rank_length_power
            return Caption(boxes=boxes, logprob=row.logprob, score=row.logprob / length)
        return Caption(boxes=boxes, logprob=score, score=score)
