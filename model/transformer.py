"""Decoder-only transformer over characters, conditioned on the template.

The template is a conditioning token at position 0 (its own embedding table); then comes
<start> and the caption. Pre-norm blocks, learned absolute positions, tied input/output
character embeddings. Rows may be left-padded (batched prefixes of different lengths): a
padding mask keeps pad positions out of attention and positions count only real tokens.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import ModuleType

import torch
import torch.nn as nn
from torch.nn import functional as F

from model.fused import FusedLayers
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
    columns [0, length) are filled. All buffers are views of one tensor `kv`
    [2 * n_layer, B, n_head, capacity, head_dim], so moving batch rows (beam search) is one copy."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor  # bool [B, capacity]: False where a row was padded
    positions: torch.Tensor  # long [B]: position id the next token gets
    length: int
    kv: torch.Tensor  # keys then values of all layers

    @classmethod
    def allocate(
        cls,
        valid: torch.Tensor,
        positions: torch.Tensor,
        n_layer: int,
        n_head: int,
        head_dim: int,
        room: int,
        like: torch.Tensor,
    ) -> KVCache:
        """An empty cache (length 0) for rows whose first columns' validity is `valid` [B, S],
        with capacity S + room; columns past S start invisible."""
        B, S = valid.shape
        kv = like.new_empty(2 * n_layer, B, n_head, S + room, head_dim)  # never read before written
        return cls.viewing(kv, torch.cat([valid, valid.new_zeros(B, room)], dim=1), positions, 0)

    @classmethod
    def viewing(cls, kv: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor, length: int) -> KVCache:
        """The cache whose buffers are the layers of `kv` [2 * n_layer, B, H, capacity, D]."""
        L = kv.size(0) // 2
        return cls([kv[i] for i in range(L)], [kv[L + i] for i in range(L)], valid, positions, length, kv)

    @classmethod
    def holding(cls, keys, values, valid, positions, room: int) -> KVCache:
        """A cache for the given full keys/values [B, H, S, D] with `room` free columns."""
        B, H, S, D = keys[0].shape
        cache = cls.allocate(valid, positions, len(keys), H, D, room, like=keys[0])
        cache.kv[:, :, :, :S] = torch.stack([*keys, *values])
        return replace(cache, length=S)

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]

    def select(self, rows: torch.Tensor) -> KVCache:
        """Reorder/select batch rows (beam search, finished rows leaving). Like a step, it reuses
        the buffers where it can: the cache it was called on must not be used again."""
        n, m = self.length, rows.numel()
        order = rows.tolist()
        if order == list(range(self.valid.shape[0])):
            return self  # every row stays where it is (beams that kept their places)
        if m > self.valid.shape[0]:  # more rows than before (beams fanning out): new buffers
            return KVCache.viewing(
                self.kv.index_select(1, rows),
                self.valid.index_select(0, rows),
                self.positions.index_select(0, rows),
                n,
            )
        # Fewer or as many rows: move the kept rows' filled columns into the first m rows of the
        # same buffers. Only rows that change are copied; a full copy of a wide batch's cache
        # costs more than the decoding step itself.
        targets = [i for i, r in enumerate(order) if r != i]
        if targets:
            sources = [order[i] for i in targets]
            # A row that is read after being overwritten is read from a copy; every other move is
            # one strided copy (advanced indexing gathers everything first: 2-3x slower here).
            kept = {r: self.kv[:, r, :, :n].clone() for r in set(sources) & set(targets)}
            for t, s in zip(targets, sources, strict=True):
                self.kv[:, t, :, :n].copy_(kept[s] if s in kept else self.kv[:, s, :, :n])
            moved = torch.tensor(targets, device=rows.device)
            self.valid[moved] = self.valid[rows[moved]]
        return KVCache.viewing(self.kv[:, :m], self.valid[:m], self.positions[rows], n)

    def keep_columns(self, accepted: torch.Tensor, written: int) -> KVCache:
        """After an `extend` of `written` tokens, keep only the first accepted[b] + 1 of them in
        row b (its input token and the guesses the model agreed with). The rest become invisible
        and the row's positions continue after what it kept; columns no row kept are reused."""
        n0 = self.length - written
        kept = accepted + 1  # [B]
        longest = int(kept.max())
        cols = torch.arange(written, device=accepted.device)[None, :]  # [1, written]
        self.valid[:, n0 : n0 + written] = cols < kept[:, None]
        positions = self.positions - written + kept
        return replace(self, positions=positions, length=n0 + longest)

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


def lay_out_prompts(
    tpl_emb: torch.Tensor, tok_emb: torch.Tensor, template_ids: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded prompts tokens [B, T] (each row <start> after its padding) -> the embedded
    sequence [pad..., template, <start>, ...] without positions [B, T+1, C], which of its
    columns are real (valid, bool [B, T+1]) and their position ids [B, T+1]."""
    B, T = tokens.shape
    valid = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=tokens.device), tokens != PAD], dim=1)
    # Positions count real tokens only, so a padded row sees the same positions as an unpadded one.
    pos = (valid.long().cumsum(dim=1) - 1).clamp(min=0)  # [B, T+1]
    x = torch.cat([F.embedding(template_ids, tpl_emb)[:, None, :], F.embedding(tokens, tok_emb)], dim=1)
    # The template token sits before the padding in the tensor; move it next to the text so
    # that the layout is [pad..., template, <start>, ...] and the mask stays simple.
    n_pad = (~valid).sum(dim=1)  # [B]
    order = torch.arange(T + 1, device=tokens.device)[None, :].expand(B, -1)
    shifted = torch.where(order < n_pad[:, None], order + 1, order)
    shifted = torch.where(order == n_pad[:, None], torch.zeros_like(order), shifted)
    x = torch.gather(x, 1, shifted[:, :, None].expand(-1, -1, x.size(-1)))
    return x, torch.gather(valid, 1, shifted), torch.gather(pos, 1, shifted)


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
        T = tokens.size(1)
        x, valid, pos = lay_out_prompts(self.tpl_emb.weight, self.tok_emb.weight, template_ids, tokens)
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
        return logits, replace(cache, positions=cache.positions + 1, length=n + 1)


class FrozenStep:
    """`Transformer.step` for serving: the same arithmetic without nn.Module calls or autograd,
    with weights laid out for small matrix products (`_frozen_linear`: pre-transposed fp32, or
    packed fp16 with `half_weights`). A decoding step at batch 1 is a few dozen tiny ops, so
    their fixed cost is what this removes. `extend` also takes several tokens per row at once
    (speculative decoding).

    A snapshot of the weights: build it once they are final (the caption generator does).
    """

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Only plain float layers: an int8-quantised model keeps its modules' own step."""
        return isinstance(model, Transformer) and all(
            isinstance(layer, nn.Linear) for b in model.blocks for layer in (b.attn.qkv, b.mlp.fc)
        )

    def __init__(
        self, model: Transformer, half_weights: bool = False, kernel: ModuleType | None = None
    ) -> None:
        cfg = model.config
        self.half_weights = half_weights and half_weights_available()
        # The fused kernel (model/fused.py) runs all blocks of a pass in one call; without it,
        # `_blocks` does the same in PyTorch ops.
        self.fused = FusedLayers(kernel, model, self.half_weights) if kernel is not None else None

        def linear(layer: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
            return _frozen_linear(layer, self.half_weights)

        self.n_head, self.n_embd, self.block_size = cfg.n_head, cfg.n_embd, cfg.block_size
        self.tok_emb = model.tok_emb.weight.detach()
        self.tpl_emb = model.tpl_emb.weight.detach()
        self.pos_emb = model.pos_emb.weight.detach()
        self.head = self.tok_emb.t().contiguous()  # tied output embedding, [C, V]
        self.ln_f = (model.ln_f.weight.detach(), model.ln_f.bias.detach(), model.ln_f.eps)
        self.layers = [
            (
                (b.ln_1.weight.detach(), b.ln_1.bias.detach(), b.ln_1.eps),
                linear(b.attn.qkv),
                linear(b.attn.proj),
                (b.ln_2.weight.detach(), b.ln_2.bias.detach(), b.ln_2.eps),
                linear(b.mlp.fc),
                linear(b.mlp.proj),
            )
            for b in model.blocks
        ]

    def _norm(self, x: torch.Tensor, ln: tuple[torch.Tensor, torch.Tensor, float]) -> torch.Tensor:
        return F.layer_norm(x, (self.n_embd,), ln[0], ln[1], ln[2])

    @torch.inference_mode()
    def prefill(
        self, template_ids: torch.Tensor, tokens: torch.Tensor, room: int = 64
    ) -> tuple[torch.Tensor, KVCache]:
        """`Transformer.prefill` through the serving path: left-padded prompts tokens [B, T] ->
        logits of the last position [B, V] and a cache with `room` free columns."""
        x, valid, pos = lay_out_prompts(self.tpl_emb, self.tok_emb, template_ids, tokens)
        x = x + self.pos_emb[pos]  # [B, S, C], S = T + 1
        S, H = x.size(1), self.n_head
        cache = KVCache.allocate(valid, pos[:, -1] + 1, len(self.layers), H, self.n_embd // H, room, like=x)
        x = self._blocks(x, cache, valid, 0)
        logits = self._norm(x[:, -1], self.ln_f) @ self.head  # [B, V]
        return logits, replace(cache, length=S)

    def __call__(self, tokens: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """tokens [B] -> logits [B, V]; writes one column of the cache in place, like `step`."""
        logits, cache = self.extend(tokens[:, None], cache)
        return logits[:, 0], cache

    @torch.inference_mode()
    def extend(self, tokens: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """T new tokens per row: tokens [B, T] -> logits [B, T, V], writing T cache columns in place.
        Speculative decoding checks a guess of T tokens this way for about the cost of one step;
        the caller then hides the columns of rejected guesses (`KVCache.keep_columns`)."""
        B, T = tokens.shape
        if cache.length + T > cache.capacity:
            cache = cache.with_room(max(64, T))
        n = cache.length
        pos = (cache.positions[:, None] + torch.arange(T, device=tokens.device)).clamp(
            max=self.block_size - 1
        )  # [B, T]
        x = self.tok_emb[tokens] + self.pos_emb[pos]  # [B, T, C]
        cache.valid[:, n : n + T] = True
        visible = cache.valid[:, : n + T]  # [B, n+T]
        x = self._blocks(x, cache, visible, n)
        logits = self._norm(x, self.ln_f) @ self.head  # [B, T, V]
        return logits, replace(cache, positions=cache.positions + T, length=n + T)

    def _blocks(self, x: torch.Tensor, cache: KVCache, visible: torch.Tensor, n: int) -> torch.Tensor:
        """All blocks: x [B, T, C] -> [B, T, C], writing cache columns n .. n+T-1; row b's new
        token t sees the columns <= n + t where visible[b] is True. In the fused kernel when
        there is one, else in PyTorch ops."""
        if self.fused is not None:
            return self.fused(x, cache.keys, cache.values, visible, n)
        B, T, C = x.shape
        H = self.n_head
        if T == 1:
            # Rows are left-padded only when prompts had different lengths; skip the mask otherwise.
            mask = None if bool(visible.all()) else visible[:, None, None, :]  # [B, 1, 1, n+1]
        else:
            causal = torch.ones(T, n + T, dtype=torch.bool, device=x.device).tril(
                diagonal=n
            )  # new token t sees <= n+t
            # ... and itself even where it is padding: a query that sees nothing makes NaNs.
            own = torch.eye(T, n + T, dtype=torch.bool, device=x.device).roll(n, dims=1)
            mask = (visible[:, None, None, :] & causal) | own  # [B, 1, T, n+T]
        for (ln_1, qkv, proj, ln_2, fc, fc_proj), k_buf, v_buf in zip(
            self.layers, cache.keys, cache.values, strict=True
        ):
            h = self._norm(x, ln_1).view(B * T, C)
            q, k, v = qkv(h).view(B, T, 3, H, C // H).unbind(2)  # [B, T, H, hd]
            k_buf[:, :, n : n + T] = k.transpose(1, 2)  # k_buf [B, H, capacity, head_dim]
            v_buf[:, :, n : n + T] = v.transpose(1, 2)
            y = F.scaled_dot_product_attention(
                q.transpose(1, 2), k_buf[:, :, : n + T], v_buf[:, :, : n + T], attn_mask=mask
            )  # [B, H, T, head_dim]
            y = y.transpose(1, 2).reshape(B * T, C)
            x = x + proj(y).view(B, T, C)
            h = F.gelu(fc(self._norm(x, ln_2).view(B * T, C)))
            x = x + fc_proj(h).view(B, T, C)
        return x


def half_weights_available() -> bool:
    """FBGEMM's fp16-weight matrix product: x86 CPUs with AVX2, in torch builds that have it."""
    try:
        _frozen_linear(nn.Linear(8, 8), half_weights=True)(torch.zeros(1, 8))
    except (AttributeError, RuntimeError):
        return False
    return True


def _frozen_linear(layer: nn.Linear, half_weights: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """x [M, in] -> [M, out] with the layer's current weights.

    fp32: weights pre-transposed to [in, out] (addmm's fast layout for one row). half: weights
    stored as fp16 in FBGEMM's packed layout and multiplied in fp32, which halves the bytes read
    per step and is 2-3x faster for 1 to 4 rows on AVX2 CPUs (bench/generation.py compares);
    the scores move by about 1e-3 (`memebot eval --half-weights` measures the accuracy).
    """
    bias = layer.bias.detach()
    if half_weights:
        with warnings.catch_warnings():
            # Marked deprecated in favour of the quantisation APIs, which have no fp16 CPU
            # kernel as fast; half_weights_available() keeps the fp32 path if it goes away.
            warnings.simplefilter("ignore")
            packed = torch.fbgemm_pack_gemm_matrix_fp16(layer.weight.detach())
            torch.fbgemm_linear_fp16_weight(torch.zeros(1, layer.in_features), packed, bias)  # warns once
        return lambda x: torch.fbgemm_linear_fp16_weight(x, packed, bias)
    weight = layer.weight.detach().t().contiguous()
    return lambda x: torch.addmm(bias, x, weight)
