"""The seed's LSTM: one layer of 1024 units, the template embedding beside every character."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from model.vocab import PAD


@dataclass
class LSTMConfig:
    vocab_size: int = 72
    n_templates: int = 101
    char_dim: int = 64
    template_dim: int = 32
    hidden: int = 1024
    dropout: float = 0.0


@dataclass
class LSTMState:
    template_ids: torch.Tensor  # [B]
    h: torch.Tensor  # [1, B, H]
    c: torch.Tensor  # [1, B, H]

    def select(self, rows: torch.Tensor) -> LSTMState:
        return LSTMState(self.template_ids[rows], self.h[:, rows], self.c[:, rows])


class LSTM(nn.Module):
    arch = "lstm"

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.char_emb = nn.Embedding(config.vocab_size, config.char_dim)
        self.tpl_emb = nn.Embedding(config.n_templates, config.template_dim)
        self.rnn = nn.LSTM(config.char_dim + config.template_dim, config.hidden, batch_first=True)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, config.vocab_size)

    def _inputs(self, template_ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        B, T = tokens.shape
        tpl = self.tpl_emb(template_ids)[:, None, :].expand(B, T, -1)
        return torch.cat([self.char_emb(tokens), tpl], dim=-1)  # [B, T, char_dim + template_dim]

    def forward(self, template_ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """template_ids [B], tokens [B, T] -> logits [B, T, V]; logits[:, t] predicts tokens[:, t+1]."""
        out, _ = self.rnn(self._inputs(template_ids, tokens))
        return self.head(self.drop(out))

    def prefill(self, template_ids: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, LSTMState]:
        """Left-padded prompts: a row's state only advances on its real tokens."""
        B, T = tokens.shape
        H = self.config.hidden
        h = torch.zeros(1, B, H, device=tokens.device)
        c = torch.zeros(1, B, H, device=tokens.device)
        x = self._inputs(template_ids, tokens)
        out = torch.zeros(B, H, device=tokens.device)
        for t in range(T):
            o, (h2, c2) = self.rnn(x[:, t : t + 1], (h, c))
            real = (tokens[:, t] != PAD)[None, :, None]
            h, c = torch.where(real, h2, h), torch.where(real, c2, c)
            out = torch.where(real[0], o[:, 0], out)
        return self.head(out), LSTMState(template_ids, h, c)

    def step(self, tokens: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        x = self._inputs(state.template_ids, tokens[:, None])
        o, (h, c) = self.rnn(x, (state.h, state.c))
        return self.head(o[:, 0]), LSTMState(state.template_ids, h, c)
