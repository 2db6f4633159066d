"""The seed's CNN, made causal: dilated convolutions that see only the past.

Conditioning as in the seed: a character embedding concatenated with a template embedding,
projected. Left-padded dilated convolutions (kernel 3, dilations 1..64: 255 characters of
left context) let one forward pass score every position, which the seed's window-per-character
CNN could not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from model.vocab import PAD


@dataclass
class CNNConfig:
    vocab_size: int = 72
    n_templates: int = 101
    char_dim: int = 16
    template_dim: int = 8
    channels: int = 256
    kernel_size: int = 3
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    dropout: float = 0.0

    @property
    def receptive_field(self) -> int:
        return 1 + (self.kernel_size - 1) * sum(self.dilations)


class CausalBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.pad = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.norm = nn.BatchNorm1d(channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T] -> [B, C, T]
        y = self.conv(F.pad(x, (self.pad, 0)))  # left padding only: position t sees <= t
        return x + self.dropout(F.relu(self.norm(y)))


class CNN(nn.Module):
    arch = "cnn"

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        self.char_emb = nn.Embedding(config.vocab_size, config.char_dim)
        self.tpl_emb = nn.Embedding(config.n_templates, config.template_dim)
        self.proj = nn.Linear(config.char_dim + config.template_dim, config.channels)
        self.blocks = nn.ModuleList(
            CausalBlock(config.channels, config.kernel_size, d, config.dropout) for d in config.dilations
        )
        self.head = nn.Sequential(
            nn.Linear(config.channels, config.channels),
            nn.ReLU(),
            nn.Linear(config.channels, config.vocab_size),
        )

    def forward(self, template_ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """template_ids [B], tokens [B, T] -> logits [B, T, V]; logits[:, t] predicts tokens[:, t+1]."""
        B, T = tokens.shape
        tpl = self.tpl_emb(template_ids)[:, None, :].expand(B, T, -1)
        x = self.proj(torch.cat([self.char_emb(tokens), tpl], dim=-1))  # [B, T, C]
        x = x.transpose(1, 2)  # [B, C, T]
        for block in self.blocks:
            x = block(x)
        return self.head(x.transpose(1, 2))

    # Decoding re-reads the receptive field: no state worth caching in a convolution stack
    # this shallow, and one pass over <= 255 positions is cheap.
    def prefill(self, template_ids: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, CNNState]:
        state = CNNState(template_ids, tokens)
        return self._last_logits(state), state

    def step(self, tokens: torch.Tensor, state: CNNState) -> tuple[torch.Tensor, CNNState]:
        state = CNNState(state.template_ids, torch.cat([state.tokens, tokens[:, None]], dim=1))
        return self._last_logits(state), state

    def _last_logits(self, state: CNNState) -> torch.Tensor:
        window = state.tokens[:, -self.config.receptive_field :]
        return self._forward_masked(state.template_ids, window)[:, -1]

    def _forward_masked(self, template_ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        B, T = tokens.shape
        tpl = self.tpl_emb(template_ids)[:, None, :].expand(B, T, -1)
        x = self.proj(torch.cat([self.char_emb(tokens), tpl], dim=-1))
        x = x * (tokens != PAD)[:, :, None]  # left pads behave like the convolution's zero padding
        x = x.transpose(1, 2)
        for block in self.blocks:
            x = block(x) * (tokens != PAD)[:, None, :]
        return self.head(x.transpose(1, 2))


@dataclass
class CNNState:
    template_ids: torch.Tensor  # [B]
    tokens: torch.Tensor  # [B, S], left-padded

    def select(self, rows: torch.Tensor) -> CNNState:
        return CNNState(self.template_ids[rows], self.tokens[rows])
