"""A preference stage: people's captions preferred over the model's own (DPO, self-play style).

Readers tell our captions from people's by sense, not by spelling: grammatical lines that mean
nothing. Teacher forcing on people's captions alone does not penalise those lines, since the
model never sees them. This stage shows it both: for each liked training meme, the person's
caption (chosen) and one the model wrote for the same template and opening with the served
decoding (rejected), and trains with Direct Preference Optimization (Rafailov et al., 2023):

    loss = -log sigmoid(beta * [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))])
           + sft_weight * (people's caption, cross-entropy per character)

where log pi(x) is the caption's summed log-probability under the network being trained and
ref the same under the starting model (computed once, before training). Using the model's own
samples as the rejected side is self-play fine-tuning (Chen et al., 2024). The cross-entropy term
keeps next-character accuracy from drifting while the preference term moves probability away
from what the model writes and people do not. A prefix the two captions share cancels out.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from model.checkpoint import Checkpoint, from_model, load_checkpoint, save_checkpoint
from model.vocab import PAD, Vocab
from training.batches import Batch, make_batch, template_id_map
from training.dataset import PackedDataset
from training.evaluate import evaluate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreferencePair:
    template_id: int  # the model's template id (0 = unknown)
    chosen: np.ndarray  # the person's caption, symbol ids (boxes joined by <sep>)
    rejected: np.ndarray  # the model's caption for the same template and opening


@dataclass
class PreferenceRecipe:
    beta: float = 0.1
    sft_weight: float = 1.0
    lr: float = 2e-5
    batch_size: int = 32  # pairs per step
    max_minutes: float = 40.0
    max_steps: int = 100_000
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_memes: int = 1000
    seed: int = 3


def sequence_logprobs(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Each caption's summed log-probability (every character, <sep> and the final <end>)."""
    logits = model(batch.template_ids, batch.inputs)
    logp = -F.cross_entropy(logits.transpose(1, 2), batch.targets, ignore_index=PAD, reduction="none")
    return logp.sum(1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DPO loss (mean over pairs) and each pair's reward margin."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin).mean(), margin.detach()


def pair_batch(pairs: list[PreferencePair]) -> Batch:
    """One batch: the chosen captions, then the rejected ones in the same order."""
    captions = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    ids = [p.template_id for p in pairs] * 2
    return make_batch(captions, ids)


@torch.no_grad()
def reference_logprobs(
    model: torch.nn.Module, pairs: list[PreferencePair], batch_size: int = 128
) -> np.ndarray:
    """[n, 2] summed log-probabilities of (chosen, rejected) under `model` (dropout off)."""
    model.eval()
    out = np.zeros((len(pairs), 2), dtype=np.float32)
    ordered = np.argsort([pair_length(p) for p in pairs], kind="stable")  # little padding
    for start in range(0, len(pairs), batch_size):
        chunk = ordered[start : start + batch_size]
        lp = sequence_logprobs(model, pair_batch([pairs[i] for i in chunk])).numpy()
        out[chunk, 0] = lp[: len(chunk)]
        out[chunk, 1] = lp[len(chunk) :]
    return out


def pair_length(pair: PreferencePair) -> int:
    return max(len(pair.chosen), len(pair.rejected))


def pair_batches(pairs: list[PreferencePair], batch_size: int, rng: np.random.Generator):
    """Endless batches of pair indices: shuffled, grouped by length within windows of 64
    batches (a batch pads to its longest caption: random mixing would waste most of a CPU
    step on padding), the batches shuffled again."""
    lengths = np.array([pair_length(p) for p in pairs])
    window = batch_size * 64
    while True:
        perm = rng.permutation(len(pairs))
        for start in range(0, len(perm), window):
            chunk = perm[start : start + window]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            groups = [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
            for g in rng.permutation(len(groups)):
                yield groups[g]


def load_pairs(
    path: Path, dataset: PackedDataset, checkpoint: Checkpoint, vocab: Vocab
) -> list[PreferencePair]:
    """Pairs from a JSON list of {"index": dataset meme, "model": [boxes]} (the rejected caption's
    boxes as generated). Captions the vocabulary cannot spell, or identical to the person's, are
    left out."""
    id_map = template_id_map(dataset, checkpoint.templates)
    pairs = []
    for row in json.loads(Path(path).read_text()):
        boxes = [b.strip() for b in row["model"]]
        while boxes and not boxes[-1]:
            boxes.pop()
        if not boxes or not all(vocab.is_known(c) for b in boxes for c in b):
            continue
        rejected = np.array(vocab.encode_boxes(boxes)[:199], dtype=np.uint8)
        chosen = dataset.caption(row["index"])
        if np.array_equal(rejected, chosen):
            continue
        tid = int(id_map[dataset.template_index[row["index"]]])
        pairs.append(PreferencePair(tid, chosen, rejected))
    return pairs


def train_preference(
    recipe: PreferenceRecipe,
    init: Checkpoint,
    pairs: list[PreferencePair],
    dataset: PackedDataset,
    run_dir: Path,
) -> Checkpoint:
    """Train from `init` on `pairs`; saves run_dir/best.pt (best validation-subset accuracy is
    not the aim here, so every evaluation's checkpoint is kept as step-N.pt) and returns the last."""
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    config = {**init.model_config, "dropout": 0.0}  # the policy must equal the reference at step 0
    model = dataclasses.replace(init, model_config=config).build().float()
    ref = reference_logprobs(model, pairs)
    log.info(
        "reference log-probabilities: %d pairs, chosen %.1f rejected %.1f (mean)", len(pairs), *ref.mean(0)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    eval_idx = np.random.default_rng(0).permutation(dataset.split(val=True))[: recipe.eval_memes]
    started, step = time.monotonic(), 0
    batches = pair_batches(pairs, recipe.batch_size, rng)
    stats: list[tuple[float, float, float]] = []

    def snapshot(metrics: dict) -> Checkpoint:
        return from_model(
            model,
            vocab=init.vocab,
            templates=init.templates,
            data_fingerprint=init.data_fingerprint,
            metrics=metrics,
            train={
                **init.train,
                "preference": {**dataclasses.asdict(recipe), "step": step, "pairs": len(pairs)},
            },
        )

    def progress() -> float:
        return max(step / recipe.max_steps, (time.monotonic() - started) / (60 * recipe.max_minutes))

    model.train()
    while progress() < 1.0:
        lr = (
            recipe.lr
            * min(1.0, (step + 1) / recipe.warmup_steps)
            * 0.5
            * (1 + math.cos(math.pi * progress()))
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        chosen_idx = next(batches)
        batch = pair_batch([pairs[i] for i in chosen_idx])
        n = len(chosen_idx)
        logits = model(batch.template_ids, batch.inputs)
        per_pos = F.cross_entropy(logits.transpose(1, 2), batch.targets, ignore_index=PAD, reduction="none")
        logp = -per_pos.sum(1)
        r = torch.from_numpy(ref[chosen_idx])
        pref, margin = dpo_loss(logp[:n], logp[n:], r[:, 0], r[:, 1], recipe.beta)
        real = batch.targets[:n] != PAD
        sft = per_pos[:n].sum() / real.sum()
        loss = pref + recipe.sft_weight * sft
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        step += 1
        stats.append((pref.item(), sft.item(), float((margin > 0).float().mean())))
        if step % 20 == 0:
            recent = np.array(stats[-20:]).mean(0)
            log.info(
                "step %d (%.1f min): preference %.4f, people's cross-entropy %.4f, chosen preferred %.0f%%",
                step,
                (time.monotonic() - started) / 60,
                recent[0],
                recent[1],
                100 * recent[2],
            )
        if step % recipe.eval_every == 0 or progress() >= 1.0:
            report = evaluate(model, dataset, eval_idx, init.templates)
            model.train()
            acc = report.overall.accuracy
            log.info("step %d: validation-subset accuracy %.2f%%", step, 100 * acc)
            save_checkpoint(
                snapshot({"val_subset_accuracy": acc}).with_half_storage(), run_dir / f"step-{step}.pt"
            )
    final = snapshot({})
    save_checkpoint(final.with_half_storage(), run_dir / "final.pt")
    return final


def write_rejected(n: int, out: Path) -> None:
    """The rejected side: one served caption (best_of 1) for each of n liked training memes
    (at least 8 up-votes, duplicates dropped, a fixed shuffle), every other one completing the
    person's first word, as `memebot quality` asks. JSON rows: index, prefix, person, model."""
    from common.catalog import load_catalog
    from common.config import load_config
    from training.dataset import load_dataset
    from training.quality import (
        BOX_JOIN,
        Sample,
        caption_texts,
        first_word_prefix,
        generate_all,
        load_served_generator,
        served_requests,
    )
    from training.train import training_indices

    config = load_config()
    config = dataclasses.replace(config, generation=dataclasses.replace(config.generation, best_of=1))
    dataset = load_dataset(config.dataset_dir, config.cache_dir)
    chosen = np.random.default_rng(11).permutation(training_indices(dataset, dedupe=True, min_votes=8))[:n]
    samples = []
    for k, (i, text) in enumerate(zip(chosen.tolist(), caption_texts(dataset, chosen), strict=True)):
        boxes = tuple(text.split(BOX_JOIN))
        template = dataset.templates[dataset.template_index[i]]
        samples.append(Sample(int(i), template, boxes, first_word_prefix(boxes) if k % 2 else ""))
    requests = served_requests(config, load_catalog(config.catalog_path), samples, 5)
    generated = generate_all(
        load_served_generator(config, config.checkpoint_path), requests, config.model.max_batch
    )
    rows = [
        {"index": s.index, "prefix": s.prefix, "person": list(s.boxes), "model": g}
        for s, g in zip(samples, generated, strict=True)
    ]
    out.write_text(json.dumps(rows))


def main() -> None:
    """python -m training.preference rejected N OUT.json, then
    python -m training.preference OUT.json RUN_DIR [lr=3e-5 beta=0.1 max_minutes=40 ...]"""
    import sys

    if sys.argv[1] == "rejected":
        write_rejected(int(sys.argv[2]), Path(sys.argv[3]))
        return

    from common.config import load_config
    from training.dataset import load_dataset

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    pairs_path, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
    fields = {f.name: f.type for f in dataclasses.fields(PreferenceRecipe)}
    overrides = {}
    for arg in sys.argv[3:]:
        k, v = arg.split("=", 1)
        overrides[k] = float(v) if fields[k] == "float" else int(v)
    recipe = PreferenceRecipe(**overrides)
    config = load_config()
    dataset = load_dataset(config.dataset_dir, config.cache_dir)
    init = load_checkpoint(config.checkpoint_path)
    pairs = load_pairs(pairs_path, dataset, init, Vocab())
    log.info("%d pairs", len(pairs))
    train_preference(recipe, init, pairs, dataset, run_dir)


if __name__ == "__main__":
    main()
