"""Beam search, batched across requests: each request keeps its `beam_width` best partial
captions, extends every one by every symbol, and keeps the best of those, until `beam_width`
captions have ended. It returns the n best ended captions, scored by log-probability over
length**LENGTH_PENALTY.
"""

from __future__ import annotations

import math

import torch

from model.decoding import Batch, Row, prompt_ids
from model.lexicon import SOFT_DEAD
from model.requests import Abandoned, GenerationResult, ResultCallback
from model.vocab import END

LENGTH_PENALTY = 0.7  # beam scores are logprob / length**alpha, so short captions do not always win


def decode(batch: Batch, done: ResultCallback, abandoned: Abandoned) -> None:
    """Decode the batch's beam requests; done(q, result) as request q ends. The i-th open
    request owns state rows i*K .. i*K + K - 1; a request that is done leaves the batch at the
    next step, so a batch costs what its open requests need, not its longest one times all of
    them."""
    requests = batch.requests
    K = max(max(1, r.beam_width) for r in requests)
    starts = [Row(request=q, prompt=prompt_ids(batch.vocab, req)) for q, req in enumerate(requests)]
    logits, state = batch.start(starts)
    expand = torch.arange(len(requests), device=batch.device).repeat_interleave(K)
    state = state.select(expand)
    logits = logits[expand]
    beams: list[Row] = []
    for start in starts:
        for k in range(K):
            # Only beam 0 is alive at first; the others would duplicate it.
            beams.append(
                Row(
                    request=start.request,
                    prompt=start.prompt,
                    logprob=0.0 if k == 0 else -math.inf,
                    seps=start.seps,
                    word=start.word,
                    ws=start.ws,
                )
            )
    finished: list[list[tuple[float, Row]]] = [[] for _ in requests]  # (score, row) per request
    open_requests = list(range(len(requests)))
    while open_requests:
        logp = batch.constrain(logits, beams)  # [Q*K, V], Q = open requests
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
            # fairseq's rule: an ending candidate counts only if it ranks within the width;
            # the request is done once `width` captions have ended. Width 1 is exactly greedy.
            for rank, (s, flat) in enumerate(zip(top_scores[i], top_idx[i], strict=True)):
                if s < SOFT_DEAD or len(chosen) == width:
                    break  # the rest are worse: masked, or broke a word rule (model/lexicon.py)
                parent, tok = i * K + flat // V, flat % V
                cand = batch.extend(beams[parent], tok, s)
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
                done(q, GenerationResult([batch.caption(row, score) for score, row in best]))
                continue
            still_open.append(q)
            for k in range(K):
                if k < len(chosen):
                    parent, tok, cand = chosen[k]
                else:  # fewer live candidates than K: a dead beam keeps the row's place
                    parent, tok = i * K, END
                    cand = Row(request=q, prompt=beams[i * K].prompt, logprob=-math.inf)
                next_beams.append(cand)
                parents.append(parent)
                next_tokens.append(tok)
        open_requests = still_open
        if not open_requests:
            break
        beams = next_beams
        state = state.select(torch.tensor(parents, device=batch.device))
        logits, state = batch.step(torch.tensor(next_tokens, device=batch.device), state)
