"""Speculative decoding: check a guess of a row's next few characters in one network pass.

Decoding one character at a time costs a full pass per character, and at small batches that
pass is dominated by fixed per-operation costs, not arithmetic. So greedy and sampled rows
ask a draft table (model/draft.py) for their next few characters, the network reads the last
token and the guesses together (`FrozenStep.extend`), and `verify` keeps the longest run of
guesses that decoding would have chosen anyway, plus the one token it chooses after them. The
guesses change only the speed, never a caption: every kept token is checked against the same
constraints and chosen by the same rule (and, for sampling, the same uniform number) as one
step at a time would have.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from model.decoding import Batch, Row
from model.vocab import END

# A longer guess costs more per pass and pays only while guesses are kept: greedy decoding
# keeps about three in four, sampling fewer. Measured on the shipped model with fp16 weights
# and the fused kernel, one request at a time, 60-character caption in ms (greedy / sampling):
# plain steps 46 / 43, guessing 2: 24 / 32, 3: 22 / 29, 4: 25 / 28, 6: 31 / 41, 8: 33 / 45.
DRAFT_LENGTH = {"greedy": 3, "sample": 3}
# It pays while a pass costs about as much as a single step, that is at small batches; a wide
# batch is limited by arithmetic, which checking guesses multiplies. Measured speed-up over
# plain steps with the fused kernel: greedy 1.3x at 2 rows, 1.16x at 4, 0.96x at 8; sampling
# (fewer guesses kept) 1.2x at 2 rows, 0.74x at 4. A batch guesses while it has at most the
# smallest limit among its live rows' methods.
SPECULATE_MAX_ROWS = {"greedy": 6, "sample": 2}

# The decoding rule being sped up: the next token of every row, logp [R, V] -> tokens [R].
Choose = Callable[[Batch, torch.Tensor, Sequence[Row]], torch.Tensor]


def guesses(batch: Batch, rows: list[Row], live: list[int]) -> list[list[int]]:
    """Each state row's guess of its next characters: none for finished rows, and none at all
    without a draft table or when the live rows are too many for guessing to pay."""
    draft = batch.draft
    if draft is None:
        return [[] for _ in rows]
    methods = [batch.requests[row.request].method for row in rows]
    if len(live) > min(SPECULATE_MAX_ROWS[methods[j]] for j in live):
        return [[] for _ in rows]
    return [
        [] if row.done else draft.guess(row.prompt + row.generated, DRAFT_LENGTH[method])
        for row, method in zip(rows, methods, strict=True)
    ]


def step(batch: Batch, rows: list[Row], drafts: list[list[int]], state: Any) -> tuple[torch.Tensor, Any]:
    """One network pass over each state row's last token followed by its guesses ->
    logits [S, T, V] (position t's follow input t) and the new state. Finished rows ride
    along on <end>s, and with no guesses this is one ordinary step (T = 1)."""
    T = 1 + max(len(d) for d in drafts)
    tokens = torch.tensor(
        [
            [END] * T if row.done else [row.generated[-1], *d, *[END] * (T - 1 - len(d))]
            for row, d in zip(rows, drafts, strict=True)
        ],
        device=batch.device,
    )
    if T == 1:
        logits, state = batch.step(tokens[:, 0], state)
        return logits[:, None, :], state
    return batch.step.extend(tokens, state)  # type: ignore[attr-defined]


def verify(
    batch: Batch,
    logits: torch.Tensor,
    live: list[int],
    rows: list[Row],
    drafts: list[list[int]],
    choose: Choose,
) -> list[int]:
    """Choose the next tokens of the live state rows from the last pass's logits [S, T, V].

    Position t's logits follow input t; inputs 1.. were the row's guesses. A row takes the
    token `choose` picks at position 0, and goes on to position t + 1 only while its chosen
    token equals guess t, so it produces exactly what one step at a time would have. All
    positions are scored in one batched call, each under the constraints of the state the row
    reaches if it keeps the guesses before it. Returns, per state row, how many guesses it
    kept (0 for rows that sat this pass out)."""
    T, V = logits.size(1), logits.size(2)
    states: list[Row] = []  # the row as it would be before choosing at each position
    flat: list[int] = []  # index of that position in logits.view(-1, V)
    first: dict[int, int] = {}  # state row -> index of its position 0 in `states`
    for j in live:
        row = rows[j]
        first[j] = len(states)
        state = row
        for t in range(min(T, len(drafts[j]) + 1)):
            states.append(state)
            flat.append(j * T + t)
            if t < len(drafts[j]):
                state = batch.extend(state, drafts[j][t], 0.0)
                if state.done:
                    break
    scores = logits.reshape(-1, V)
    logp = batch.constrain(scores if len(flat) == scores.size(0) else scores[flat], states)
    chosen_t = choose(batch, logp, states)
    chosen_logp = logp.gather(1, chosen_t[:, None])[:, 0].tolist()
    chosen = chosen_t.tolist()
    accepted = [0] * logits.size(0)
    for j in live:
        row, base = rows[j], first[j]
        for t in range(min(T, len(drafts[j]) + 1)):
            tok = chosen[base + t]
            batch.advance(row, tok, chosen_logp[base + t])
            accepted[j] = t
            if row.done or t >= len(drafts[j]) or drafts[j][t] != tok:
                break
    return accepted
