"""Training: one recipe (TOML) in, a run folder out.

The run folder holds `state.pt` (everything needed to resume: weights, optimizer, step,
elapsed time, RNG), `best.pt` (a plain checkpoint, best validation accuracy so far),
`curves.csv` and `curves.png`. Killing the process at any moment loses at most the work
since the last save (every `save_every_minutes`).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from model.checkpoint import (
    Checkpoint,
    architectures,
    build_model,
    from_model,
    load_checkpoint,
    save_checkpoint,
)
from model.vocab import PAD, Vocab
from training.batches import Batch, template_id_map, training_batches
from training.dataset import PackedDataset
from training.evaluate import evaluate

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    arch: str = "transformer"
    model: dict[str, Any] = field(default_factory=dict)  # hyper-parameters of the network
    batch_size: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 300
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # The schedule runs to whichever budget is reached first.
    max_steps: int = 100_000
    max_minutes: float = 0.0  # 0 = no time budget
    eval_every: int = 500
    eval_memes: int = 2000  # validation memes scored at each evaluation (all of them: `memebot eval`)
    save_every_minutes: float = 3.0
    unknown_template_p: float = 0.05
    seed: int = 1337
    init_from: str = ""  # warm start from a checkpoint's weights (fresh optimizer)
    # Data people liked. dedupe: a caption posted many times on one template (reposts, bots)
    # is trained on once. vote_weight: each meme's characters weigh 1 + vote_weight * log(1 + votes),
    # scaled to mean 1, so what imgflip users up-voted pulls harder without dropping the rest.
    dedupe: bool = False
    vote_weight: float = 0.0
    min_votes: int = 0  # train only on memes with at least this many up-votes (a fine-tuning stage)


def load_recipe(path: Path | None, overrides: dict[str, Any]) -> Recipe:
    data: dict[str, Any] = {}
    if path is not None:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(
            f"recipe: unknown setting(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})"
        )
    return Recipe(**data)


def lr_at(recipe: Recipe, progress: float, step: int) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio over the training budget."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    ratio = recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return recipe.lr * ratio


def loss_on(model: torch.nn.Module, batch: Batch, per_token: bool = False) -> torch.Tensor:
    """Cross-entropy of the batch's targets. With batch.weights: by default each meme's mean is
    weighted (fine-tuning: a short up-voted caption counts as much as a long one, and negative
    weights push away); `per_token` weights each character by its meme's weight instead, so a
    long caption still counts by its length and all-ones weights give the unweighted loss."""
    logits = model(batch.template_ids, batch.inputs)  # [B, T, V]
    if batch.weights is None:
        return F.cross_entropy(logits.transpose(1, 2), batch.targets, ignore_index=PAD)
    per_pos = F.cross_entropy(logits.transpose(1, 2), batch.targets, ignore_index=PAD, reduction="none")
    real = batch.targets != PAD
    if per_token:
        w = batch.weights[:, None] * real
        return (per_pos * w).sum() / w.sum().clamp(min=1e-8)
    per_meme = per_pos.sum(1) / real.sum(1).clamp(min=1)
    return (per_meme * batch.weights).sum() / batch.weights.abs().sum().clamp(min=1e-8)


def training_indices(dataset: PackedDataset, dedupe: bool, min_votes: int = 0) -> np.ndarray:
    """The training split (its memes with at least `min_votes` up-votes); with dedupe, only the
    first meme of each (template, caption)."""
    train_idx = dataset.split(val=False)
    if min_votes > 0:
        train_idx = train_idx[dataset.votes[train_idx] >= min_votes]
    if not dedupe:
        return train_idx
    seen: set[tuple[int, bytes]] = set()
    kept = []
    for i in train_idx.tolist():
        key = (int(dataset.template_index[i]), dataset.caption(i).tobytes())
        if key not in seen:
            seen.add(key)
            kept.append(i)
    return np.array(kept, dtype=np.int64)


def meme_weights(dataset: PackedDataset, indices: np.ndarray, vote_weight: float) -> np.ndarray | None:
    """Per-meme loss weights (indexed like the dataset) with mean 1 over `indices`; None when off."""
    if vote_weight <= 0:
        return None
    raw = 1.0 + vote_weight * np.log1p(np.maximum(dataset.votes, 0).astype(np.float64))
    return (raw / raw[indices].mean()).astype(np.float32)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    # No weight decay on biases, norms and embeddings' 1-d parameters.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.99))


class CurveLog:
    """curves.csv, appended as training goes (so a resumed run continues the same file), and its plot."""

    columns = ("step", "minutes", "train_loss", "val_loss", "val_accuracy", "lr")

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "curves.csv"
        self.plot_path = run_dir / "curves.png"

    def append(self, row: dict[str, float]) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in self.columns})

    def rows(self) -> list[dict[str, float]]:
        if not self.path.exists():
            return []
        with open(self.path) as f:
            return [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.rows()
        evals = [r for r in rows if "val_accuracy" in r]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
        ax1.plot(
            [r["step"] for r in rows if "train_loss" in r],
            [r["train_loss"] for r in rows if "train_loss" in r],
            label="train",
        )
        ax1.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], label="validation")
        ax1.set_xlabel("step")
        ax1.set_ylabel("loss (nats/char)")
        ax1.legend()
        ax2.plot([r["step"] for r in evals], [100 * r["val_accuracy"] for r in evals], color="C2")
        ax2.axhline(63.61, color="grey", linestyle="--", label="seed CNN 63.61%")
        ax2.set_xlabel("step")
        ax2.set_ylabel("validation accuracy (%)")
        ax2.legend()
        fig.tight_layout()
        fig.savefig(self.plot_path, dpi=90)
        plt.close(fig)


def _save_state(
    path: Path,
    model,
    optimizer,
    step: int,
    elapsed: float,
    best: float,
    rng: np.random.Generator,
    recipe: Recipe,
) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "best": best,
            "rng": rng.bit_generator.state,
            "recipe": dataclasses.asdict(recipe),
        },
        tmp,
    )
    os.replace(tmp, path)


def train(
    recipe: Recipe,
    dataset: PackedDataset,
    run_dir: Path,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
) -> Checkpoint:
    """Train (or resume) a run; returns the best checkpoint. Resumes when run_dir/state.pt exists."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(recipe.seed)
    vocab = Vocab()
    templates = list(dataset.templates)
    if recipe.arch not in architectures():
        raise ValueError(f"unknown architecture {recipe.arch!r}; choose one of {', '.join(architectures())}")
    model_cfg = {"vocab_size": len(vocab), "n_templates": len(templates) + 1, **recipe.model}
    model = build_model(recipe.arch, model_cfg).to(dev)
    if recipe.init_from:
        init = load_checkpoint(Path(recipe.init_from))
        if init.arch != recipe.arch or init.templates != templates:
            raise ValueError(
                f"{recipe.init_from}: architecture or template index differs from this recipe's data"
            )
        model.load_state_dict(init.weights())
    optimizer = make_optimizer(model, recipe)
    rng = np.random.default_rng(recipe.seed)
    step, elapsed, best = 0, 0.0, -1.0
    state_path = run_dir / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, map_location=dev, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed, best = state["step"], state["elapsed"], state["best"]
        rng.bit_generator.state = state["rng"]
        log.info("resumed %s at step %d (%.1f min)", run_dir, step, elapsed / 60)

    train_idx = training_indices(dataset, recipe.dedupe, recipe.min_votes)
    weights = meme_weights(dataset, train_idx, recipe.vote_weight)
    val_idx = dataset.split(val=True)
    eval_idx = np.random.default_rng(0).permutation(val_idx)[: recipe.eval_memes]
    id_map = template_id_map(dataset, templates)
    batches = training_batches(
        dataset, train_idx, id_map, recipe.batch_size, rng, recipe.unknown_template_p, weights
    )
    curves = CurveLog(run_dir)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "%s: %.2fM parameters, %d training memes, device %s", recipe.arch, n_params / 1e6, len(train_idx), dev
    )

    def checkpoint_now(metrics: dict[str, Any]) -> Checkpoint:
        return from_model(
            model,
            vocab=list(vocab.symbols),
            templates=templates,
            data_fingerprint=dataset.fingerprint,
            metrics=metrics,
            train={
                "recipe": dataclasses.asdict(recipe),
                "step": step,
                "minutes": elapsed / 60,
                "parameters": n_params,
            },
        )

    def budget_progress() -> float:
        p = step / recipe.max_steps
        if recipe.max_minutes > 0:
            p = max(p, elapsed / (60 * recipe.max_minutes))
        return p

    # On a GPU, bf16 matrix products (fp32 weights and optimizer): several times the fp32 speed.
    bf16 = dev.type == "cuda"
    if bf16:
        torch.backends.cuda.matmul.allow_tf32 = True
    last_save = time.monotonic()
    t_last = time.monotonic()
    smooth = None
    bar = tqdm(total=recipe.max_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    model.train()
    while budget_progress() < 1.0:
        lr = lr_at(recipe, budget_progress(), step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = next(batches).to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_on(model, batch, per_token=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        step += 1
        now = time.monotonic()
        elapsed += now - t_last
        t_last = now
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{smooth:.3f}", lr=f"{lr:.2e}", min=f"{elapsed / 60:.1f}")
        done = budget_progress() >= 1.0
        if step % recipe.eval_every == 0 or done:
            report = evaluate(model, dataset, eval_idx, templates, device=dev)
            model.train()
            acc = report.overall.accuracy
            val_loss = report.overall.bits_per_char * math.log(2)
            curves.append(
                {
                    "step": step,
                    "minutes": elapsed / 60,
                    "train_loss": smooth,
                    "val_loss": val_loss,
                    "val_accuracy": acc,
                    "lr": lr,
                }
            )
            bar.write(
                f"step {step}: val accuracy {100 * acc:.2f}% ({recipe.eval_memes} memes), val loss {val_loss:.4f}"
            )
            if acc > best:
                best = acc
                save_checkpoint(
                    checkpoint_now({"val_subset_accuracy": acc, "val_subset_memes": len(eval_idx)}),
                    run_dir / "best.pt",
                )
            curves.plot()
            t_last = time.monotonic()  # evaluation time does not count as training time
        if done or time.monotonic() - last_save > 60 * recipe.save_every_minutes:
            _save_state(state_path, model, optimizer, step, elapsed, best, rng, recipe)
            last_save = time.monotonic()
    bar.close()
    _save_state(state_path, model, optimizer, step, elapsed, best, rng, recipe)
    return load_checkpoint(run_dir / "best.pt")
