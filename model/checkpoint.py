"""One checkpoint file = weights + architecture + vocabulary + template index + provenance.

Loading checks everything a wrong file could get wrong and says what to do about it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from model.vocab import Vocab

FORMAT = "memebot-checkpoint"
INT8_SCALE = ".int8_scale"  # a state-dict key's suffix: the per-row scales of an int8-stored matrix
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason in words."""


def architectures() -> dict[str, tuple[type, type]]:
    """arch name -> (network class, its config dataclass). Imported lazily: each file is one network."""
    from model.cnn import CNN, CNNConfig
    from model.lstm import LSTM, LSTMConfig
    from model.transformer import Transformer, TransformerConfig

    return {
        "transformer": (Transformer, TransformerConfig),
        "cnn": (CNN, CNNConfig),
        "lstm": (LSTM, LSTMConfig),
    }


def build_model(arch: str, config: dict[str, Any]) -> nn.Module:
    archs = architectures()
    if arch not in archs:
        raise CheckpointError(f"unknown architecture {arch!r}; known: {', '.join(archs)}")
    net_cls, cfg_cls = archs[arch]
    known = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = set(config) - known
    if unknown:
        raise CheckpointError(f"{arch} has no hyper-parameter(s) {', '.join(sorted(unknown))}")
    return net_cls(cfg_cls(**config))


@dataclass
class Checkpoint:
    arch: str
    model_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    vocab: list[str]
    templates: list[str]  # dataset names; the model's template id of templates[i] is i + 1, 0 = unknown
    data_fingerprint: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # recipe, steps, time: provenance

    @property
    def model_id(self) -> str:
        """Short stable id for this set of weights, stored with every meme it makes."""
        h = hashlib.sha256()
        for name in sorted(self.state_dict):
            h.update(name.encode())
            h.update(self.state_dict[name].detach().cpu().numpy().tobytes())
        return f"{self.arch}-{h.hexdigest()[:10]}"

    def template_id(self, dataset_name: str) -> int:
        try:
            return self.templates.index(dataset_name) + 1
        except ValueError:
            return 0

    def with_int8_storage(self) -> Checkpoint:
        """The same checkpoint with its matrices stored as int8, one fp16 scale per row
        (symmetric, rounded to nearest; the row's largest weight is 127), other floating-point
        tensors in fp16: about half the fp16 file, so the 25 MB a shipped checkpoint may take
        holds a network of twice the parameters. `weights` (and `build`) turn them back into
        floats; serving is unchanged."""
        state: dict[str, torch.Tensor] = {}
        for name, value in self.state_dict.items():
            if value.is_floating_point() and value.dim() == 2:
                w = value.float()
                scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
                state[name] = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
                state[name + INT8_SCALE] = scale.half()
            else:
                state[name] = value.half() if value.is_floating_point() else value
        return dataclasses.replace(self, state_dict=state)

    def weights(self) -> dict[str, torch.Tensor]:
        """The state dict as the network takes it: int8-stored matrices (`with_int8_storage`)
        multiplied back by their scales; everything else as stored."""
        out = {}
        for name, value in self.state_dict.items():
            if name.endswith(INT8_SCALE):
                continue
            scale = self.state_dict.get(name + INT8_SCALE)
            out[name] = value if scale is None else value.float() * scale.float()[:, None]
        return out

    def with_half_storage(self) -> Checkpoint:
        """The same checkpoint with its floating-point weights stored in fp16: half the file, and
        the rounding that serving with [model] half_weights applies anyway. `build` loads them
        back into the network's fp32 parameters."""
        state = {k: v.half() if v.is_floating_point() else v for k, v in self.state_dict.items()}
        return dataclasses.replace(self, state_dict=state)

    def build(self) -> nn.Module:
        model = build_model(self.arch, self.model_config)
        try:
            model.load_state_dict(self.weights())
        except RuntimeError as exc:
            raise CheckpointError(
                f"weights do not fit the {self.arch} architecture stored with them: {exc}"
            ) from exc
        return model


def from_model(model: nn.Module, **fields: Any) -> Checkpoint:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return Checkpoint(
        arch=model.arch, model_config=dataclasses.asdict(model.config), state_dict=state, **fields
    )


def save_checkpoint(ckpt: Checkpoint, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **dataclasses.asdict(ckpt)}
    buf = io.BytesIO()
    torch.save(payload, buf)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)  # never leave a half-written checkpoint where a bot would load it


def load_checkpoint(path: Path, vocab: Vocab | None = None) -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path}: train one with `memebot train` or set [model] checkpoint"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a memebot checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')}, this memebot reads {VERSION}"
        )
    vocab = vocab or Vocab()
    if tuple(payload["vocab"]) != vocab.symbols:
        raise CheckpointError(f"{path} was trained with a different vocabulary; retrain it with this version")
    fields = {f.name for f in dataclasses.fields(Checkpoint)}
    ckpt = Checkpoint(**{k: v for k, v in payload.items() if k in fields})
    n_templates = ckpt.model_config.get("n_templates")
    if n_templates is not None and n_templates != len(ckpt.templates) + 1:
        raise CheckpointError(
            f"{path}: the network has {n_templates} template slots but the index lists {len(ckpt.templates)} + 1"
        )
    return ckpt
