"""The seed project's CNN, rebuilt only to time its decoding on this machine (random weights).

5 blocks of Conv1d(1024, kernel 5) + ReLU + BatchNorm, MaxPool(2) after the first four;
16-dim character and 8-dim template embeddings concatenated and projected to 16; global
max-pool; Linear 1024, ReLU, BatchNorm, Linear to 72. It scores one next character from a
pre-padded 128-character window, so decoding re-reads the whole window for every character.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from model.vocab import END, PAD, START

WINDOW = 128


class SeedCNN(nn.Module):
    def __init__(self, vocab_size: int = 72, n_templates: int = 100) -> None:
        super().__init__()
        self.char_emb = nn.Embedding(vocab_size, 16)
        self.tpl_emb = nn.Embedding(n_templates, 8)
        self.proj = nn.Linear(24, 16)
        layers: list[nn.Module] = []
        channels = 16
        for i in range(5):
            layers += [nn.Conv1d(channels, 1024, 5, padding=2), nn.ReLU(), nn.BatchNorm1d(1024)]
            if i < 4:
                layers.append(nn.MaxPool1d(2))
            channels = 1024
        self.convs = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(1024, 1024), nn.ReLU(), nn.BatchNorm1d(1024), nn.Linear(1024, vocab_size)
        )

    def forward(self, template_ids: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """template_ids [B], window [B, 128] -> next-character logits [B, V]."""
        B, T = window.shape
        tpl = self.tpl_emb(template_ids)[:, None, :].expand(B, T, -1)
        x = self.proj(torch.cat([self.char_emb(window), tpl], dim=-1)).transpose(1, 2)  # [B, 16, T]
        x = self.convs(x).amax(dim=2)  # global max-pool -> [B, 1024]
        return self.head(x)


@torch.inference_mode()
def seed_decode(model: SeedCNN, template_id: int, n_chars: int, beam_width: int = 1) -> None:
    """Decode n_chars characters the seed's way: one full window pass per character (per beam)."""
    window = torch.full((beam_width, WINDOW), PAD, dtype=torch.long)
    window[:, -1] = START
    tids = torch.full((beam_width,), template_id, dtype=torch.long)
    for _ in range(n_chars):
        logits = model(tids, window)
        logits[:, END] = -1e9  # time exactly n_chars characters
        nxt = logits.argmax(-1)
        window = torch.cat([window[:, 1:], nxt[:, None]], dim=1)
