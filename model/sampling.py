"""Greedy decoding and sampling (temperature, top-k, top-p), batched: a row per wanted caption.

A greedy row takes its most likely next token, a sampled row draws one from its filtered
distribution, and both kinds share one loop: one network pass per step for the whole batch.
A sampled request decodes max(n, best_of) candidates and gets them back distinct, best first.
Rows end at different times; a request is answered as soon as its last row ends, and a
request its caller gave up on stops being decoded. With a draft table a small batch checks
guesses of several characters per pass (model/speculation.py), which changes no caption.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch

from model import speculation
from model.decoding import Batch, Row, prompt_ids
from model.requests import Abandoned, GenerationRequest, GenerationResult, ResultCallback, request_rows

# Finished rows leave the batch (one copy of the moved rows' cache) once the live rows are at
# most this share of it. With the fused kernel a riding row costs as much as a live one; batch
# of 32 / 64 sampled and 32 greedy, ms, same process: 359 / 606 / 223 at 0.5, 326 / 550 / 197 at
# 0.75, 326 / 559 / 197 at 0.9.
COMPACT_AT = 0.75


def decode(batch: Batch, done: ResultCallback, abandoned: Abandoned) -> None:
    """Decode the batch's greedy and sampled requests; done(q, result) as request q ends."""
    rows = []
    for q, req in enumerate(batch.requests):
        g = torch.Generator()
        g.manual_seed(req.seed if req.seed is not None else random.getrandbits(63))
        prompt = prompt_ids(batch.vocab, req)
        sampled = req.method == "sample" and req.temperature > 0
        for _ in range(request_rows(req)):
            noise = torch.rand(req.max_length, generator=g).tolist() if sampled else None
            rows.append(Row(request=q, prompt=prompt, noise=noise))
    logits, state = batch.start(rows)
    logits = logits[:, None, :]  # [S, T, V]: the logits of each state row's last T inputs
    slots = list(range(len(rows)))  # slots[j]: the row decoded in state row j
    unfinished = [request_rows(req) for req in batch.requests]  # rows still decoding, per request
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
            idx = torch.tensor(live, device=batch.device)
            state, logits = state.select(idx), logits[idx]
            slots, drafts = [slots[j] for j in live], [drafts[j] for j in live]
            live = list(range(len(slots)))
        slot_rows = [rows[i] for i in slots]
        # Each live row's next token, and the guesses after it that it would have chosen too.
        accepted = speculation.verify(batch, logits, live, slot_rows, drafts, choose)
        for j in live:
            row = slot_rows[j]
            if row.done:
                unfinished[row.request] -= 1
                if unfinished[row.request] == 0:
                    _deliver(batch, row.request, rows, done)
        if all(slot_rows[j].done for j in live):
            break
        if logits.size(1) > 1:  # the last pass read guesses: drop the cache of those not kept
            state = state.keep_columns(torch.tensor(accepted, device=batch.device), logits.size(1))
        drafts = speculation.guesses(batch, slot_rows, live)
        logits, state = speculation.step(batch, slot_rows, drafts, state)


def _deliver(batch: Batch, q: int, rows: list[Row], done: ResultCallback) -> None:
    """Request q's rows have all ended: hand its captions over (best of N: distinct captions,
    best first)."""
    request = batch.requests[q]
    captions = [batch.caption(row) for row in rows if row.request == q]
    if request.method == "sample" and request.best_of > 1:
        # A verbatim copy of a training caption ranks below every caption of the model's
        # own: the highest-likelihood candidates are often someone's meme word for word.
        is_copy = batch.lexicon.is_copy if batch.lexicon is not None else lambda boxes: False
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


def choose(batch: Batch, logp: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
    """The next token of every row (logp [R, V] -> [R]): arg-max for greedy rows, a draw for
    sampled ones."""
    sampled = [j for j, r in enumerate(rows) if r.noise is not None]
    if len(sampled) == len(rows):
        return draw(logp, [batch.requests[r.request] for r in rows], [_uniform(r) for r in rows])
    tokens = logp.argmax(dim=1)
    if sampled:
        idx = torch.tensor(sampled, device=logp.device)
        u = [_uniform(rows[j]) for j in sampled]
        tokens[idx] = draw(logp[idx], [batch.requests[rows[j].request] for j in sampled], u)
    return tokens


def draw(logp: torch.Tensor, requests: Sequence[GenerationRequest], uniforms: list[float]) -> torch.Tensor:
    """One token per row from its temperature / top-k / top-p filtered distribution, all rows
    at once by inverse CDF with the given uniform numbers. logp [R, V] -> tokens [R]."""
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


def _uniform(row: Row) -> float:
    """The uniform number that picks the row's next token."""
    k = len(row.generated)
    return row.noise[k] if row.noise is not None and k < len(row.noise) else 0.5
