"""Picking the template from the text: how likely the user's words are under every template.

The network is conditioned on a template id, so it gives log P(text | template) for any
template. Teacher-forced like training (training/batches.py): the input is <start> and then the
text's symbols, and position t predicts symbol t. Every row reads the same text with a different
template id, so one batched forward pass scores every template:

    template_ids [R]          tokens [R, T]                       targets [R, T]
    Drake-Hotline-Bling       <start> w h e n   t h e ... r       w h e n   t h e ... r y
    Two-Buttons               <start> w h e n   t h e ... r       w h e n   t h e ... r y
    ...

The text is a prefix, encoded as decoding reads one (boxes joined by <sep>, model/decoding.py
`prompt_ids`), but without what would come after it: no trailing space, <sep> or <end>, since
whether the caption goes on is not what the user said.

Nothing can be shared between rows: the template is the first token every position attends to.
The cost is a forward pass over templates x symbols positions (the shipped model on 2 CPU cores:
about half a second for 88 templates x 36 symbols), so a pick runs on the pool's worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.nn import functional as F

from model.checkpoint import Checkpoint
from model.decoding import MAX_SYMBOLS
from model.requests import TemplateScores
from model.vocab import START, Vocab, normalize_user_text


def text_ids(vocab: Vocab, text: str) -> list[int]:
    """A user's text -> the caption symbols it stands for (no <start>, no trailing space);
    [] when nothing is left to score. `|` starts a new box, as in a prefix."""
    boxes = normalize_user_text(text)
    boxes[-1] = boxes[-1].rstrip()
    ids = vocab.encode_boxes(boxes)
    return ids[:MAX_SYMBOLS] if any(boxes) else []


@torch.inference_mode()
def text_log_likelihoods(model: nn.Module, template_ids: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """log P(ids | template) for each template id, in one forward pass: template_ids [R] -> [R].

    The sum of the symbols' log-probabilities, not their mean: every row scores the same
    symbols, so both rank the templates alike, but only the sum is the text's log-likelihood,
    whose softmax over templates is P(template | text) (each template as likely beforehand).
    The mean would divide every difference by the text's length and make a long text, which
    says more about its template, look less sure than a short one.
    """
    assert not model.training, "score with model.eval(): dropout would make the scores random"
    R, device = len(template_ids), template_ids.device
    targets = torch.tensor(list(ids), dtype=torch.long, device=device)[None, :].repeat(R, 1)  # [R, T]
    start = torch.full((R, 1), START, dtype=torch.long, device=device)
    tokens = torch.cat([start, targets[:, :-1]], dim=1)  # [R, T]: the last symbol predicts nothing we score
    logits = model(template_ids, tokens)  # [R, T, V]: logits[:, t] predicts targets[:, t]
    logprobs = F.log_softmax(logits.float(), dim=-1)
    return logprobs.gather(2, targets[:, :, None]).squeeze(2).sum(dim=1)  # [R]


def score_ids(
    model: nn.Module, checkpoint: Checkpoint, ids: Sequence[int], templates: Sequence[str] = ()
) -> TemplateScores:
    """Rank `templates` (dataset names; () = all the checkpoint knows) by log P(ids | template).
    Templates the checkpoint does not know are left out: its shared "unknown" id would score
    them all alike. Nothing to score (no ids, or no known template) gives an empty ranking."""
    names = list(dict.fromkeys(templates or checkpoint.templates))
    known = [n for n in names if checkpoint.template_id(n)]
    if not ids or not known:
        return TemplateScores((), ())
    device = next(model.parameters()).device
    template_ids = torch.tensor([checkpoint.template_id(n) for n in known], device=device)
    scores = text_log_likelihoods(model, template_ids, ids).tolist()
    return TemplateScores.ranked(dict(zip(known, scores, strict=True)))


def score_templates(
    model: nn.Module, checkpoint: Checkpoint, text: str, templates: Sequence[str] = ()
) -> TemplateScores:
    """Rank templates by how likely a user's text is as the start of their captions."""
    return score_ids(model, checkpoint, text_ids(Vocab(tuple(checkpoint.vocab)), text), templates)
