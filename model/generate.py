"""The caption generator: one loaded network decoding batches of GenerationRequests.

`generate_batch` decodes a mixed batch: greedy and sampled requests share one batched loop
(model/sampling.py: a row per wanted caption, sped up by speculative guesses, model/speculation.py),
beam requests another (model/beam.py: a row per beam). Every network exposes
`prefill(template_ids, left_padded_tokens)` and `step(tokens, state)`, so the transformer
(key-value cache) and the LSTM (hidden state) never re-read the prefix. What every method
shares (rows, the constraints on each step, the word rules) is in model/decoding.py.
`score_templates` ranks templates by how likely a text is under each (model/pick.py): picking
the template from the user's words.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from model import beam, sampling
from model.checkpoint import Checkpoint, load_checkpoint
from model.decoding import Batch, prompt_ids
from model.draft import DraftTable, load_draft_table
from model.fused import load_fused_kernel
from model.lexicon import BatchRules, Lexicon, LexiconError, Rules, load_lexicon
from model.pick import score_templates
from model.requests import (
    METHODS,
    Abandoned,
    GenerationRequest,
    GenerationResult,
    ResultCallback,
    TemplateScores,
)
from model.speculation import DRAFT_LENGTH
from model.transformer import FrozenStep
from model.vocab import Vocab

logger = logging.getLogger(__name__)

# The loop that decodes each method (model/requests.py names them). Greedy and sampled requests
# share one: a greedy row is one that always takes its most likely next token.
Decode = Callable[[Batch, ResultCallback, Abandoned], None]
DECODERS: dict[str, Decode] = {"greedy": sampling.decode, "sample": sampling.decode, "beam": beam.decode}


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
        self.lexicon = lexicon
        self._rules = Rules(self.vocab.symbols, lexicon)
        self._rules.trie(())  # built now rather than on the first request (the filter's variant is not)
        on_cpu = self.device.type == "cpu"
        self._step = (
            FrozenStep(self.model, half_weights=half_weights and on_cpu, kernel=kernel if on_cpu else None)
            if FrozenStep.supports(self.model)
            else self.model.step
        )
        # Speculative decoding needs a draft table and a step that takes several tokens at once.
        self.draft = draft if isinstance(self._step, FrozenStep) else None

    @torch.inference_mode()
    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_result: ResultCallback | None = None,
        abandoned: Abandoned | None = None,
    ) -> list[GenerationResult]:
        """One result per request, in order. `on_result(i, result)` is also called as soon as
        request i is done (greedy and sampled requests first, then beam requests). A request
        for which `abandoned(i)` turns true stops being decoded and gets an empty result."""
        unknown = [r.method for r in requests if r.method not in DECODERS]
        if unknown:
            raise ValueError(f"unknown decoding method {unknown[0]!r}: use {', '.join(METHODS)}")
        results: list[GenerationResult | None] = [None] * len(requests)
        given_up: set[int] = set()

        def collect(indices: list[int]) -> ResultCallback:
            """Results of the sub-batch `indices` -> their places in the whole batch."""

            def done(k: int, result: GenerationResult) -> None:
                results[indices[k]] = result
                if on_result is not None:
                    on_result(indices[k], result)

            return done

        def gone(indices: list[int]) -> Abandoned:
            def asked(k: int) -> bool:
                if abandoned is not None and abandoned(indices[k]):
                    given_up.add(indices[k])
                    return True
                return False

            return asked

        for decode in dict.fromkeys(DECODERS.values()):  # each loop once, in the table's order
            indices = [i for i, r in enumerate(requests) if DECODERS[r.method] is decode]
            if indices:
                decode(self._batch([requests[i] for i in indices]), collect(indices), gone(indices))
        lost = [i for i, r in enumerate(results) if r is None and i not in given_up]
        if lost:
            raise RuntimeError(f"decoding ended without a result for request(s) {lost}")
        return [r if r is not None else GenerationResult() for r in results]

    def score_templates(self, text: str, templates: Sequence[str] = ()) -> TemplateScores:
        """`templates` (dataset names; () = all the model knows) ranked by how likely `text`
        is as the start of their captions: one forward pass, a row per template (model/pick.py)."""
        return score_templates(self.model, self.checkpoint, text, templates)

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The request's prefix as the symbols its captions start with (no <start>)."""
        return prompt_ids(self.vocab, request)

    def _batch(self, requests: list[GenerationRequest]) -> Batch:
        """What one decoding method needs to decode these requests together."""
        return Batch(
            requests=requests,
            vocab=self.vocab,
            rules=BatchRules(self._rules, requests),
            step=self._step,
            prefill=self._prefill,
            device=self.device,
            draft=self.draft,
            lexicon=self.lexicon,
        )

    def _prefill(self, templates: list[str], tokens: torch.Tensor, longest: int) -> tuple[torch.Tensor, Any]:
        """Read left-padded prompts [R, W] -> last logits [R, V] and the network's state."""
        template_ids = torch.tensor([self.checkpoint.template_id(t) for t in templates], device=self.device)
        tokens = tokens.to(self.device)
        if isinstance(self._step, FrozenStep):
            # Room for the longest caption and a last guess up front: growing the cache
            # mid-decoding copies it.
            return self._step.prefill(template_ids, tokens, room=longest + 1 + max(DRAFT_LENGTH.values()))
        return self.model.prefill(template_ids, tokens)


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
