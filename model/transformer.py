"""Decoder-only transformer over characters, conditioned on the template.

The template is a conditioning token at position 0 (its own embedding table); then comes
<start> and the caption. Pre-norm blocks, learned absolute positions, tied input/output
character embeddings. Rows may be left-padded (batched prefixes of different lengths): a
padding mask keeps pad positions out of attention and positions count only real tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from model.vocab import PAD


@dataclass
class TransformerConfig:
    vocab_size: int = 72
    n_templates: int = 101  # including id 0, the shared "unknown template"
    block_size: int = 208  # template token + <start> + 200 symbols + <end>, rounded up
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 256
    dropout: float = 0.0


@dataclass
class KVCache:
    """Keys and values of every layer so far, in buffers with room to grow, so a decoding step
    writes one column instead of copying the whole cache. Each buffer [B, n_head, capacity, head_dim];
    columns [0, length) are filled."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor  # bool [B, capacity]: False where a row was padded
    positions: torch.Tensor  # long [B]: position id the next token gets
    length: int

    @classmethod
    def holding(cls, keys, values, valid, positions, room: int) -> KVCache:
        """A cache for the given full keys/values [B, H, S, D] with `room` free columns."""

        def widen(t: torch.Tensor, fill: bool | float) -> torch.Tensor:
            shape = list(t.shape)
            shape[2 if t.dim() == 4 else 1] = room
            return torch.cat(
                [t, torch.full(shape, fill, dtype=t.dtype, device=t.device)], dim=2 if t.dim() == 4 else 1
            )

        S = valid.shape[1]
        return cls(
            [widen(k, 0.0) for k in keys], [widen(v, 0.0) for v in values], widen(valid, False), positions, S
        )

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]

    def select(self, rows: torch.Tensor) -> KVCache:
        """Reorder/select batch rows (beam search, finished rows leaving). Like a step, it reuses
        the buffers where it can: the cache it was called on must not be used again."""
        n = self.length
        if rows.numel() == self.valid.shape[0]:
            # Beam search reorders every step: copy only the rows that change, and only their
            # filled columns (a full copy of a wide batch's cache costs more than the step).
            moved = (rows != torch.arange(rows.numel(), device=rows.device)).nonzero()[:, 0]
            if moved.numel():
                sources = rows[moved]
                for buf in (*self.keys, *self.values):
                    buf[moved, :, :n] = buf[sources, :, :n]
                self.valid[moved] = self.valid[sources]
            return KVCache(self.keys, self.values, self.valid, self.positions[rows], n)
        return KVCache(
            [k.index_select(0, rows) for k in self.keys],
            [v.index_select(0, rows) for v in self.values],
            self.valid.index_select(0, rows),
            self.positions.index_select(0, rows),
            n,
        )

    def with_room(self, room: int = 64) -> KVCache:
        """The same cache in buffers with `room` more free columns (when a step finds it full)."""
        n = self.length
        return KVCache.holding(
            [k[:, :, :n] for k in self.keys],
            [v[:, :, :n] for v in self.values],
            self.valid[:, :n],
            self.positions,
            room=room,
        )


class SelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, past: tuple[torch.Tensor, torch.Tensor, int] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # [B, T, C] -> [B, n_head, T, head_dim]
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if past is not None:
            k_buf, v_buf, n = past  # write the new columns in place, attend over the filled part
            k_buf[:, :, n : n + T] = k
            v_buf[:, :, n : n + T] = v
            k, v = k_buf[:, :, : n + T], v_buf[:, :, : n + T]
        dropout = self.dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y), (k, v)


class MLP(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, mask, past):
        a, kv = self.attn(self.ln_1(x), mask, past)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, kv


class Transformer(nn.Module):
    arch = "transformer"

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.tpl_emb = nn.Embedding(config.n_templates, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, template_ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """template_ids [B], tokens [B, T] (right-padded, starting with <start>) -> logits [B, T, V].

        logits[:, t] predicts tokens[:, t + 1]. Padding after a caption's end needs no mask:
        causal attention never looks forward.
        """
        B, T = tokens.shape
        assert T + 1 <= self.config.block_size, f"sequence of {T} exceeds block size"
        pos = torch.arange(T + 1, device=tokens.device)
        x = torch.cat([self.tpl_emb(template_ids)[:, None, :], self.tok_emb(tokens)], dim=1)  # [B, T+1, C]
        x = self.drop(x + self.pos_emb(pos))
        for block in self.blocks:
            x, _ = block(x, None, None)
        return self.head(self.ln_f(x[:, 1:]))

    def prefill(self, template_ids: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """Start incremental decoding from left-padded prompts.

        tokens [B, T], left-padded with <pad>, each row starting with <start> after its padding.
        Returns the logits of the last position [B, V] and the cache.
        """
        B, T = tokens.shape
        valid = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=tokens.device), tokens != PAD], dim=1)
        # Positions count real tokens only, so a padded row sees the same positions as an unpadded one.
        pos = (valid.long().cumsum(dim=1) - 1).clamp(min=0)  # [B, T+1]
        x = torch.cat([self.tpl_emb(template_ids)[:, None, :], self.tok_emb(tokens)], dim=1)
        # The template token sits before the padding in the tensor; move it next to the text so
        # that the layout is [pad..., template, <start>, ...] and the mask stays simple.
        n_pad = (~valid).sum(dim=1)  # [B]
        order = torch.arange(T + 1, device=tokens.device)[None, :].expand(B, -1)
        shifted = torch.where(order < n_pad[:, None], order + 1, order)
        shifted = torch.where(order == n_pad[:, None], torch.zeros_like(order), shifted)
        x = torch.gather(x, 1, shifted[:, :, None].expand(-1, -1, x.size(-1)))
        valid = torch.gather(valid, 1, shifted)
        pos = torch.gather(pos, 1, shifted)
        x = x + self.pos_emb(pos)
        causal = torch.ones(T + 1, T + 1, dtype=torch.bool, device=tokens.device).tril()
        mask = causal[None, None] & valid[:, None, None, :]  # [B, 1, T+1, T+1]
        # A pad query row attends to nothing, which makes NaNs; let it see itself.
        mask = mask | torch.eye(T + 1, dtype=torch.bool, device=tokens.device)[None, None]
        keys, values = [], []
        for block in self.blocks:
            x, (k, v) = block(x, mask, None)
            keys.append(k)
            values.append(v)
        logits = self.head(self.ln_f(x[:, -1]))
        return logits, KVCache.holding(keys, values, valid, pos[:, -1] + 1, room=64)

    def step(self, tokens: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """One new token per row: tokens [B] -> logits [B, V]; the cache grows in place."""
        if cache.length == cache.capacity:
            cache = cache.with_room()
        n = cache.length
        pos = cache.positions.clamp(max=self.config.block_size - 1)
        x = self.tok_emb(tokens)[:, None, :] + self.pos_emb(pos)[:, None, :]  # [B, 1, C]
        cache.valid[:, n] = True
        mask = cache.valid[:, None, None, : n + 1]  # [B, 1, 1, n+1]
        for block, k, v in zip(self.blocks, cache.keys, cache.values, strict=True):
            x, _ = block(x, mask, (k, v, n))
        logits = self.head(self.ln_f(x[:, -1]))
        return logits, KVCache(cache.keys, cache.values, cache.valid, cache.positions + 1, n + 1)


class FrozenStep:
    """`Transformer.step` for serving: the same arithmetic without nn.Module calls or autograd,
    and with every weight pre-transposed to [in, out], which makes the batch-1 matrix-vector
    products about twice as fast on CPU as F.linear's [out, in] layout. A decoding step at batch 1
    is a few dozen tiny ops, so their fixed cost is what this removes.

    A snapshot of the weights: build it once they are final (the caption generator does).
    """

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Only plain float layers: an int8-quantised model keeps its modules' own step."""
        return isinstance(model, Transformer) and all(
            isinstance(layer, nn.Linear) for b in model.blocks for layer in (b.attn.qkv, b.mlp.fc)
        )

    def __init__(self, model: Transformer) -> None:
        def t(linear: nn.Linear) -> torch.Tensor:
            return linear.weight.detach().t().contiguous()

        cfg = model.config
        self.n_head, self.n_embd, self.block_size = cfg.n_head, cfg.n_embd, cfg.block_size
        self.tok_emb = model.tok_emb.weight.detach()
        self.pos_emb = model.pos_emb.weight.detach()
        self.head = self.tok_emb.t().contiguous()  # tied output embedding, [C, V]
        self.ln_f = (model.ln_f.weight.detach(), model.ln_f.bias.detach(), model.ln_f.eps)
        self.layers = [
            (
                (b.ln_1.weight.detach(), b.ln_1.bias.detach(), b.ln_1.eps),
                (t(b.attn.qkv), b.attn.qkv.bias.detach()),
                (t(b.attn.proj), b.attn.proj.bias.detach()),
                (b.ln_2.weight.detach(), b.ln_2.bias.detach(), b.ln_2.eps),
                (t(b.mlp.fc), b.mlp.fc.bias.detach()),
                (t(b.mlp.proj), b.mlp.proj.bias.detach()),
            )
            for b in model.blocks
        ]

    def _norm(self, x: torch.Tensor, ln: tuple[torch.Tensor, torch.Tensor, float]) -> torch.Tensor:
        return F.layer_norm(x, (self.n_embd,), ln[0], ln[1], ln[2])

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """tokens [B] -> logits [B, V]; writes one column of the cache in place, like `step`."""
        if cache.length == cache.capacity:
            cache = cache.with_room()
        n = cache.length
        B, C, H = tokens.shape[0], self.n_embd, self.n_head
        pos = cache.positions.clamp(max=self.block_size - 1)
        x = self.tok_emb[tokens] + self.pos_emb[pos]  # [B, C]
        cache.valid[:, n] = True
        # Rows are left-padded only when prompts had different lengths; skip the mask otherwise.
        visible = cache.valid[:, : n + 1]
        mask = None if bool(visible.all()) else visible[:, None, None, :]  # [B, 1, 1, n+1]
        for (ln_1, qkv, proj, ln_2, fc, fc_proj), k_buf, v_buf in zip(
            self.layers, cache.keys, cache.values, strict=True
        ):
            q, k, v = torch.addmm(qkv[1], self._norm(x, ln_1), qkv[0]).view(B, 3, H, C // H).unbind(1)
            k_buf[:, :, n] = k  # k_buf [B, H, capacity, head_dim]
            v_buf[:, :, n] = v
            y = F.scaled_dot_product_attention(
                q[:, :, None, :], k_buf[:, :, : n + 1], v_buf[:, :, : n + 1], attn_mask=mask
            ).view(B, C)  # [B, H, 1, head_dim] -> [B, C]
            x = x + torch.addmm(proj[1], y, proj[0])
            x = x + torch.addmm(
                fc_proj[1], F.gelu(torch.addmm(fc[1], self._norm(x, ln_2), fc[0])), fc_proj[0]
            )
        logits = self._norm(x, self.ln_f) @ self.head
        return logits, KVCache(cache.keys, cache.values, cache.valid, cache.positions + 1, n + 1)
