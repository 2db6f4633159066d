"""Batched decoding: greedy, sampling (temperature, top-k, top-p) and beam search.

One `generate_batch` call decodes a mixed batch: greedy and sampled requests share one
batched loop (a row per wanted caption), beam requests another (a row per beam). Every
network exposes `prefill(template_ids, left_padded_tokens)` and `step(tokens, state)`, so
the transformer (key-value cache) and the LSTM (hidden state) never re-read the prefix.

Constraints applied to the logits at every step, for every method:
- at most n_boxes - 1 <sep>;
- a banned word is never completed: while the current word spells one, every token that
  would end the word (space, punctuation, <sep>, <end>) is masked, so the word can only
  grow into something else;
- <pad> and <start> are never produced.

Word rules, per request (model/lexicon.py), applied the same way for every method and
checked against the same masks when speculative guesses are verified:
- `lexicon`: a word is spelled only along the lexicon's character trie (plus the prefix's and
  the template name's words; numbers always) and ends only where a word of it ends;
- `block_repeats`: a word that would complete a word 3-gram already in the caption cannot end,
  and a box equal to an earlier one cannot be closed.
A caption the length cap cuts where it could not have ended loses its unfinished last word.
`best_of` samples several candidates of a request in one batch and returns them best first.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from model.checkpoint import Checkpoint, load_checkpoint
from model.draft import DraftTable, load_draft_table
from model.fused import load_fused_kernel
from model.lexicon import SOFT_DEAD, BatchRules, Lexicon, LexiconError, Rules, WordState, load_lexicon
from model.requests import Abandoned, Caption, GenerationRequest, GenerationResult, ResultCallback
from model.transformer import FrozenStep
from model.vocab import END, PAD, SEP, START, Vocab, normalize_user_text

logger = logging.getLogger(__name__)

MAX_SYMBOLS = 199  # the data filter keeps captions under 200 symbols; the models never saw longer
LENGTH_PENALTY = 0.7  # beam scores are logprob / length**alpha, so short captions do not always win
# Speculative decoding (see model/draft.py) checks a few guessed characters per pass. A longer
# guess costs more per pass and pays only while guesses are kept: greedy decoding keeps about
# three in four, sampling fewer. Measured on the shipped model with fp16 weights and the fused
# kernel, one request at a time, 60-character caption in ms (greedy / sampling): plain steps
# 46 / 43, guessing 2: 24 / 32, 3: 22 / 29, 4: 25 / 28, 6: 31 / 41, 8: 33 / 45.
DRAFT_LENGTH = {"greedy": 3, "sample": 3}
# It pays while a pass costs about as much as a single step, that is at small batches; a wide
# batch is limited by arithmetic, which checking guesses multiplies. Measured speed-up over
# plain steps with the fused kernel: greedy 1.3x at 2 rows, 1.16x at 4, 0.96x at 8; sampling
# (fewer guesses kept) 1.2x at 2 rows, 0.74x at 4. A batch guesses while it has at most the
# smallest limit among its live rows' methods.
SPECULATE_MAX_ROWS = {"greedy": 6, "sample": 2}
# Finished rows leave the batch (one copy of the moved rows' cache) once the live rows are at
# most this share of it. With the fused kernel a riding row costs as much as a live one; batch
# of 32 / 64 sampled and 32 greedy, ms, same process: 359 / 606 / 223 at 0.5, 326 / 550 / 197 at
# 0.75, 326 / 559 / 197 at 0.9.
COMPACT_AT = 0.75


@dataclass
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


class CaptionGenerator:
    """Decodes GenerationRequests with one loaded network on one device. Not thread-safe:
    the pool gives each generator its own worker thread."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        device: str | torch.device = "cpu",
        model: torch.nn.Module | None = None,
        draft: DraftTable | None = None,
        half_weights: bool = False,
        kernel: ModuleType | None = None,
        lexicon: Lexicon | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.model = (model or checkpoint.build()).to(self.device).eval()
        self.vocab = Vocab(tuple(checkpoint.vocab))
        self.model_id = checkpoint.model_id
        # Tokens that end a word: everything that is not a letter, digit or apostrophe.
        self._word_end = torch.tensor(
            [
                i
                for i, s in enumerate(self.vocab.symbols)
                if i in (SEP, END) or (len(s) == 1 and not (s.isalnum() or s == "'"))
            ],
            device=self.device,
        )
        self._never = torch.tensor([PAD, START], device=self.device)
        self.lexicon = lexicon
        self._rules = Rules(self.vocab.symbols, lexicon)
        self._rules.trie(())  # built now rather than on the first request (the filter's variant is not)
        self._batch: BatchRules | None = None  # the word rules of the sub-batch being decoded
        on_cpu = self.device.type == "cpu"
        self._step = (
            FrozenStep(self.model, half_weights=half_weights and on_cpu, kernel=kernel if on_cpu else None)
            if FrozenStep.supports(self.model)
            else self.model.step
        )
        # Speculative decoding needs a draft table and a step that takes several tokens at once.
        self.draft = draft if isinstance(self._step, FrozenStep) else None

    # ---- public -------------------------------------------------------------------------

    @torch.inference_mode()
    def generate_batch(
        self,
        requests: list[GenerationRequest] | tuple[GenerationRequest, ...],
        on_result: ResultCallback | None = None,
        abandoned: Abandoned | None = None,
    ) -> list[GenerationResult]:
        """One result per request, in order. `on_result(i, result)` is also called as soon as
        request i is done (greedy and sampled requests first, then beam requests). A request
        for which `abandoned(i)` turns true stops being decoded and gets an empty result."""
        unknown = [r.method for r in requests if r.method not in ("greedy", "sample", "beam")]
        if unknown:
            raise ValueError(f"unknown decoding method {unknown[0]!r}: use greedy, sample or beam")
        results: list[GenerationResult | None] = [None] * len(requests)

        def collect(indices: list[int]) -> ResultCallback:
            """Results of the sub-batch `indices` -> their places in the whole batch."""

            def done(k: int, result: GenerationResult) -> None:
                results[indices[k]] = result
                if on_result is not None:
                    on_result(indices[k], result)

            return done

        given_up: set[int] = set()

        def gone(indices: list[int]) -> Abandoned:
            def asked(k: int) -> bool:
                if abandoned is not None and abandoned(indices[k]):
                    given_up.add(indices[k])
                    return True
                return False

            return asked

        for methods, decode in ((("greedy", "sample"), self._sample), (("beam",), self._beam)):
            indices = [i for i, r in enumerate(requests) if r.method in methods]
            if indices:
                decode([requests[i] for i in indices], collect(indices), gone(indices))
        lost = [i for i, r in enumerate(results) if r is None and i not in given_up]
        if lost:
            raise RuntimeError(f"decoding ended without a result for request(s) {lost}")
        return [r if r is not None else GenerationResult() for r in results]

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        boxes = normalize_user_text(request.prefix) if request.prefix else [""]
        if request.n_boxes and len(boxes) > request.n_boxes:
            # Text typed past the last box joins it, as the renderer would show it.
            boxes = boxes[: request.n_boxes - 1] + [" ".join(b for b in boxes[request.n_boxes - 1 :] if b)]
        if boxes[-1] and not boxes[-1].endswith(" "):
            # A prefix is whole words: "pineapple on" continues with a new word, not "onion".
            boxes[-1] += " "
        return self.vocab.encode_boxes(boxes)[: MAX_SYMBOLS - 1]

    # ---- shared machinery ---------------------------------------------------------------

    def _start(self, requests: list[GenerationRequest], rows: list[Row]) -> tuple[torch.Tensor, Any]:
        """Prefill all rows' prompts (left-padded) -> last logits [R, V] and the model state."""
        width = max(len(r.prompt) for r in rows) + 1
        tokens = torch.full((len(rows), width), PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            seq = [START, *row.prompt]
            tokens[i, width - len(seq) :] = torch.tensor(seq)
            row.seps = row.prompt.count(SEP)
            row.word = self._last_word(row.prompt)
            if self._batch is not None:
                row.ws = self._batch.state(row.request, row.prompt)
        template_ids = torch.tensor([self.checkpoint.template_id(requests[r.request].template) for r in rows])
        template_ids, tokens = template_ids.to(self.device), tokens.to(self.device)
        if isinstance(self._step, FrozenStep):
            # Room for the longest caption and a last guess up front: growing the cache
            # mid-decoding copies it.
            longest = min(max(r.max_length for r in requests), MAX_SYMBOLS)
            return self._step.prefill(template_ids, tokens, room=longest + 1 + max(DRAFT_LENGTH.values()))
        return self.model.prefill(template_ids, tokens)

    def _last_word(self, ids: list[int]) -> str:
        word = ""
        for i in ids:
            s = self.vocab.symbols[i]
            word = word + s if (len(s) == 1 and (s.isalnum() or s == "'")) else ""
        return word

    def _constrain(
        self, logits: torch.Tensor, rows: list[Row], requests: list[GenerationRequest]
    ) -> torch.Tensor:
        """Mask what a row must not produce next. logits [R, V] -> log-probabilities [R, V]."""
        logits = logits.float().clone()
        logits[:, self._never] = -math.inf
        # Row lists per rule, then one tensor op per rule: a wide batch has dozens of rows.
        no_sep, in_banned, at_cap = [], [], []
        ruled: list[int] = []  # rows under word rules (model/lexicon.py)
        for i, row in enumerate(rows):
            req = requests[row.request]
            if req.n_boxes and row.seps >= req.n_boxes - 1:
                no_sep.append(i)
            if req.banned_words and row.word and row.word in req.banned_words:
                in_banned.append(i)
            if len(row.prompt) + len(row.generated) >= MAX_SYMBOLS - 1:
                at_cap.append(i)
            elif row.ws is not None:
                ruled.append(i)
        if no_sep:
            logits[no_sep, SEP] = -math.inf
        if in_banned:
            logits[torch.tensor(in_banned)[:, None], self._word_end[None, :]] = -math.inf
        if ruled:
            assert self._batch is not None
            self._batch.mask(
                logits,
                ruled,
                [rows[i].request for i in ruled],
                [rows[i].ws for i in ruled],  # type: ignore[misc]
            )
        if at_cap:
            logits[at_cap] = -math.inf  # only <end> is left
            logits[at_cap, END] = 0.0
        return torch.log_softmax(logits, dim=-1)

    def _advance(self, row: Row, token: int, logprob: float, request: GenerationRequest) -> None:
        row.generated.append(token)
        row.logprob += logprob
        if token == END or len(row.generated) >= request.max_length:
            row.done = True
        if token == SEP:
            row.seps += 1
        s = self.vocab.symbols[token]
        row.word = row.word + s if (len(s) == 1 and (s.isalnum() or s == "'")) else ""
        if row.ws is not None:
            assert self._batch is not None
            row.ws = self._batch.advance(row.request, row.ws, token)

    def _caption(self, row: Row, request: GenerationRequest, score: float | None = None) -> Caption:
        ids = row.prompt + row.generated
        if request.banned_words and row.word in request.banned_words and END not in row.generated:
            ids = ids[: len(ids) - len(row.word)]  # stopped by the length cap mid-word: drop the word
        elif row.ws is not None and self._batch is not None:
            # Stopped by a length cap where the word rules would not have let it end.
            ended = ids[:-1] if ids and ids[-1] == END else ids
            ids = self._batch.trim(row.request, ended, len(row.prompt), row.ws)
        boxes = self.vocab.decode_boxes(ids)
        boxes = [b.strip() for b in boxes]
        if request.n_boxes:
            boxes = (boxes + [""] * request.n_boxes)[: request.n_boxes]
        if score is None:
            length = max(1, len(row.generated)) ** request.rank_length_power
            return Caption(boxes=boxes, logprob=row.logprob, score=row.logprob / length)
        return Caption(boxes=boxes, logprob=score, score=score)

    # ---- greedy and sampling ------------------------------------------------------------

    def _sample(self, requests: list[GenerationRequest], done: ResultCallback, abandoned: Abandoned) -> None:
        self._batch = BatchRules(self._rules, requests)
        rows = []
        for q, req in enumerate(requests):
            g = torch.Generator()
            g.manual_seed(req.seed if req.seed is not None else random.getrandbits(63))
            prompt = self.prompt_ids(req)
            sampled = req.method == "sample" and req.temperature > 0
            for _ in range(_rows_of(req)):
                noise = torch.rand(req.max_length, generator=g).tolist() if sampled else None
                rows.append(Row(q, prompt, noise=noise))
        logits, state = self._start(requests, rows)
        logits = logits[:, None, :]  # [S, T, V]: the logits of each state row's last T inputs
        slots = list(range(len(rows)))  # slots[j]: the row decoded in state row j
        unfinished = [_rows_of(req) for req in requests]  # rows still decoding, per request
        drafts: list[list[int]] = [[] for _ in slots]  # guesses fed as inputs 1.. of the last pass
        while True:
            for q, left in enumerate(unfinished):
                if left > 0 and abandoned(q):
                    unfinished[q] = 0  # never delivered
                    for row in rows:
                        row.done = row.done or row.request == q
            live = [j for j, i in enumerate(slots) if not rows[i].done]
            if not live:
                break
            if len(live) <= len(slots) * COMPACT_AT:
                # Compact once a quarter of the rows have finished, not every time one does:
                # until then a finished row rides along, cheaper than a copy per row.
                idx = torch.tensor(live, device=self.device)
                state, logits = state.select(idx), logits[idx]
                slots, drafts = [slots[j] for j in live], [drafts[j] for j in live]
                live = list(range(len(slots)))
            slot_rows = [rows[i] for i in slots]
            accepted = self._verify(logits, live, slot_rows, drafts, requests)
            for j in live:
                row = slot_rows[j]
                if row.done:
                    unfinished[row.request] -= 1
                    if unfinished[row.request] == 0:
                        self._deliver(row.request, rows, requests, done)
            if all(slot_rows[j].done for j in live):
                break
            if logits.size(1) > 1:
                state = state.keep_columns(torch.tensor(accepted, device=self.device), logits.size(1))
            speculate = self.draft is not None and len(live) <= min(
                SPECULATE_MAX_ROWS[requests[slot_rows[j].request].method] for j in live
            )
            drafts = self._guesses(slot_rows, requests) if speculate else [[] for _ in slot_rows]
            T = 1 + max(len(d) for d in drafts)
            # A live row's inputs: its last token, then its guesses; finished rows ride along.
            tokens = torch.tensor(
                [
                    [END] * T if row.done else [row.generated[-1], *d, *[END] * (T - 1 - len(d))]
                    for row, d in zip(slot_rows, drafts, strict=True)
                ],
                device=self.device,
            )
            if T == 1:
                step_logits, state = self._step(tokens[:, 0], state)
                logits = step_logits[:, None, :]
            else:
                logits, state = self._step.extend(tokens, state)  # type: ignore[union-attr]

    def _deliver(
        self, q: int, rows: list[Row], requests: list[GenerationRequest], done: ResultCallback
    ) -> None:
        """Request q's rows have all ended: hand its captions over (best of N: distinct
        captions, best first)."""
        request = requests[q]
        captions = [self._caption(row, request) for row in rows if row.request == q]
        if request.method == "sample" and request.best_of > 1:
            # A verbatim copy of a training caption ranks below every caption of the model's
            # own: the highest-likelihood candidates are often someone's meme word for word.
            is_copy = self.lexicon.is_copy if self.lexicon is not None else lambda boxes: False
            ranked = sorted(
                captions,
                key=lambda c: (not is_copy(c.boxes), c.score if c.score is not None else -math.inf),
                reverse=True,
            )
            seen: set[tuple[str, ...]] = set()
            captions = []
            for c in ranked:
                if tuple(c.boxes) not in seen:
                    seen.add(tuple(c.boxes))
                    captions.append(c)
        done(q, GenerationResult(captions))

    def _guesses(self, rows: list[Row], requests: list[GenerationRequest]) -> list[list[int]]:
        """Each unfinished row's guess of its next characters."""
        assert self.draft is not None
        return [
            []
            if row.done
            else self.draft.guess(row.prompt + row.generated, DRAFT_LENGTH[requests[row.request].method])
            for row in rows
        ]

    def _verify(
        self,
        logits: torch.Tensor,
        live: list[int],
        slot_rows: list[Row],
        drafts: list[list[int]],
        requests: list[GenerationRequest],
    ) -> list[int]:
        """Choose the next tokens of the live state rows from the last pass's logits [S, T, V].

        Position t's logits follow input t; inputs 1.. were the row's guesses. A row takes the
        token decoding would choose at position 0, and goes on to position t + 1 only while its
        chosen token equals guess t, so it produces exactly what one step at a time would have.
        All positions are scored in one batched call, each under the constraints of the state
        the row reaches if it keeps the guesses before it. Returns, per state row, how many
        guesses it kept (0 for rows that sat this pass out)."""
        T, V = logits.size(1), logits.size(2)
        states: list[Row] = []  # the row as it would be before choosing at each position
        flat: list[int] = []  # index of that position in logits.view(-1, V)
        first: dict[int, int] = {}  # state row -> index of its position 0 in `states`
        for j in live:
            row = slot_rows[j]
            first[j] = len(states)
            state = row
            for t in range(min(T, len(drafts[j]) + 1)):
                states.append(state)
                flat.append(j * T + t)
                if t < len(drafts[j]):
                    state = self._extend(state, drafts[j][t], 0.0, requests[row.request])
                    if state.done:
                        break
        scores = logits.reshape(-1, V)
        logp = self._constrain(scores if len(flat) == scores.size(0) else scores[flat], states, requests)
        chosen = self._choose(logp, states, requests)
        chosen_logp = logp.gather(1, chosen[:, None])[:, 0].tolist()
        chosen = chosen.tolist()
        accepted = [0] * logits.size(0)
        for j in live:
            row, base = slot_rows[j], first[j]
            for t in range(min(T, len(drafts[j]) + 1)):
                tok = chosen[base + t]
                self._advance(row, tok, chosen_logp[base + t], requests[row.request])
                accepted[j] = t
                if row.done or t >= len(drafts[j]) or drafts[j][t] != tok:
                    break
        return accepted

    def _choose(self, logp: torch.Tensor, rows: list[Row], requests: list[GenerationRequest]) -> torch.Tensor:
        """The next token of every row (logp [R, V] -> [R]): arg-max for greedy rows, a draw for sampled ones."""
        sampled = [j for j, r in enumerate(rows) if r.noise is not None]
        if len(sampled) == len(rows):
            return self._draw(logp, [requests[r.request] for r in rows], [_uniform(r) for r in rows])
        tokens = logp.argmax(dim=1)
        if sampled:
            idx = torch.tensor(sampled, device=logp.device)
            u = [_uniform(rows[j]) for j in sampled]
            tokens[idx] = self._draw(logp[idx], [requests[rows[j].request] for j in sampled], u)
        return tokens

    @staticmethod
    def _draw(logp: torch.Tensor, requests: list[GenerationRequest], uniforms: list[float]) -> torch.Tensor:
        """One token per row from its temperature / top-k / top-p filtered distribution, all rows at
        once by inverse CDF with the given uniform numbers. logp [R, V] -> tokens [R]."""
        R, V = logp.shape
        dev = logp.device
        temperature = torch.tensor([r.temperature for r in requests], device=dev)[:, None]
        top_ks = [r.top_k if 0 < r.top_k < V else V for r in requests]
        top_ps = [r.top_p for r in requests]
        u = torch.tensor(uniforms, device=dev)[:, None]  # [R, 1]
        ranked, order = (logp / temperature).sort(dim=1, descending=True)
        if min(top_ks) < V:
            top_k = torch.tensor(top_ks, device=dev)[:, None]
            ranked = ranked.masked_fill(torch.arange(V, device=dev)[None, :] >= top_k, -math.inf)
        probs = ranked.softmax(dim=1)
        if min(top_ps) < 1.0:
            # top-p keeps the smallest set of most likely tokens whose mass reaches top_p
            top_p = torch.tensor(top_ps, device=dev)[:, None]
            probs = probs.masked_fill(probs.cumsum(dim=1) - probs > top_p, 0.0)
        cdf = probs.cumsum(dim=1)
        pick = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp(max=V - 1)  # [R, 1]
        return order.gather(1, pick)[:, 0]

    # ---- beam search --------------------------------------------------------------------

    def _beam(self, requests: list[GenerationRequest], done: ResultCallback, abandoned: Abandoned) -> None:
        """Beam search, batched across requests. The i-th open request owns state rows
        i*K .. i*K + K - 1; a request that is done leaves the batch at the next step, so a
        batch costs what its open requests need, not its longest one times all of them."""
        K = max(max(1, r.beam_width) for r in requests)
        self._batch = BatchRules(self._rules, requests)
        starts = [Row(q, self.prompt_ids(req)) for q, req in enumerate(requests)]
        logits, state = self._start(requests, starts)
        expand = torch.arange(len(requests), device=self.device).repeat_interleave(K)
        state = state.select(expand)
        logits = logits[expand]
        beams: list[Row] = []
        for q, start in enumerate(starts):
            for k in range(K):
                # Only beam 0 is alive at first; the others would duplicate it.
                alive = k < max(1, requests[q].beam_width) and k == 0
                beams.append(
                    Row(q, start.prompt, [], 0.0 if alive else -math.inf, start.seps, start.word, ws=start.ws)
                )
        finished: list[list[tuple[float, Row]]] = [[] for _ in requests]
        open_requests = list(range(len(requests)))
        while open_requests:
            logp = self._constrain(logits, beams, requests)  # [Q*K, V], Q = open requests
            scores = torch.tensor([b.logprob for b in beams], device=logp.device)[:, None] + logp
            V = logp.size(1)
            top_scores, top_idx = scores.view(len(open_requests), K * V).topk(2 * K, dim=1)
            top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
            still_open: list[int] = []
            next_beams: list[Row] = []
            parents: list[int] = []
            next_tokens: list[int] = []
            for i, q in enumerate(open_requests):
                if abandoned(q):
                    continue  # leaves the batch: no row of the next step descends from it
                req = requests[q]
                width = max(1, req.beam_width)
                chosen: list[tuple[int, int, Row]] = []
                # fairseq's rule: an ending candidate counts only if it ranks within the
                # width; the request is done once `width` captions have ended. Width 1 is
                # exactly greedy.
                for rank, (s, flat) in enumerate(zip(top_scores[i], top_idx[i], strict=True)):
                    if s < SOFT_DEAD or len(chosen) == width:
                        break  # the rest are worse: masked, or broke a word rule (model/lexicon.py)
                    parent, tok = i * K + flat // V, flat % V
                    cand = self._extend(beams[parent], tok, s, req)
                    if cand.done:
                        if rank < width:
                            finished[q].append((s / max(1, len(cand.generated)) ** LENGTH_PENALTY, cand))
                    else:
                        chosen.append((parent, tok, cand))
                if len(finished[q]) >= width or not chosen:
                    if not finished[q]:  # nothing ended inside the width: the open beams it has
                        finished[q] = [
                            (b.logprob, b) for b in beams[i * K : (i + 1) * K] if b.logprob > -math.inf
                        ]
                    best = sorted(finished[q], key=lambda f: f[0], reverse=True)[: max(1, req.n)]
                    done(q, GenerationResult([self._caption(row, req, score) for score, row in best]))
                    continue
                still_open.append(q)
                for k in range(K):
                    if k < len(chosen):
                        parent, tok, cand = chosen[k]
                    else:  # fewer live candidates than K: a dead beam keeps the row's place
                        parent, tok, cand = i * K, END, Row(q, beams[i * K].prompt, [], -math.inf)
                    next_beams.append(cand)
                    parents.append(parent)
                    next_tokens.append(tok)
            open_requests = still_open
            if not open_requests:
                break
            beams = next_beams
            state = state.select(torch.tensor(parents, device=self.device))
            logits, state = self._step(torch.tensor(next_tokens, device=self.device), state)

    def _extend(self, parent: Row, token: int, score: float, request: GenerationRequest) -> Row:
        row = Row(
            parent.request,
            parent.prompt,
            list(parent.generated),
            0.0,
            parent.seps,
            parent.word,
            noise=parent.noise,
            ws=parent.ws,
        )
        self._advance(row, token, 0.0, request)
        row.logprob = score
        return row


def _rows_of(request: GenerationRequest) -> int:
    """Rows a greedy or sampled request decodes: its n captions, or its best-of-N candidates."""
    return max(1, request.n, request.best_of if request.method == "sample" else 1)


def _uniform(row: Row) -> float:
    k = len(row.generated)
    return row.noise[k] if row.noise is not None and k < len(row.noise) else 0.5


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """int8 weights for every Linear layer, activations quantised on the fly (CPU only)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the eager API's deprecation notice, not actionable here
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def round_weights_to_half(model: torch.nn.Module) -> None:
    """Round the transformer blocks' Linear weights to fp16 in place (kept as fp32 numbers): the
    arithmetic of serving with half_weights (FrozenStep), for measuring its accuracy with the
    ordinary forward pass. Other networks are served in fp32 and are left alone."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, torch.nn.Module):
        return
    with torch.no_grad():
        for module in blocks.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(module.weight.half().float())


def load_generator(
    checkpoint: Path,
    device: str = "cpu",
    threads: int | None = None,
    quantize: bool = False,
    compile: bool = False,
    draft: Path | None = None,
    half_weights: bool = False,
    kernel_dir: Path | None = None,
    lexicon: Path | None = None,
) -> CaptionGenerator:
    """The pool's factory: load a checkpoint onto a device, with optional CPU speed-ups.
    `kernel_dir`: build (once) and use the fused decoding kernel there (CPU transformers).
    `lexicon`: the word lexicon file for requests with `lexicon` on (model/lexicon.py)."""
    if threads:
        torch.set_num_threads(threads)
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build().eval()
    if quantize and str(device) == "cpu":
        model = quantize_int8(model)
    table = load_draft_table(draft, ckpt.vocab) if draft else None
    kernel = None
    if kernel_dir is not None and str(device) == "cpu" and FrozenStep.supports(model):
        kernel = load_fused_kernel(kernel_dir)
    words = None
    if lexicon:
        try:
            words = load_lexicon(lexicon)
        except LexiconError as exc:  # optional, like the draft table: decode without the rule
            logger.warning("decoding without the word lexicon: %s (`memebot lexicon` rebuilds it)", exc)
    gen = CaptionGenerator(
        ckpt, device=device, model=model, draft=table, half_weights=half_weights, kernel=kernel, lexicon=words
    )
    if compile:
        # Measured off by default: the cache length is specialised on, so it recompiles for
        # minutes and then decodes slower than FrozenStep (README, "Speed").
        gen._step = torch.compile(gen._step, dynamic=True)
        gen.draft = None  # the compiled step takes one token per row
    return gen
