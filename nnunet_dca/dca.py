"""Dual Cross-Attention (DCA): Ates, Mohan, Celik, "Dual Cross-Attention for Medical Image Segmentation", 2023.

DCA refines the first encoder skips of a U-Net before the decoder sees them:

1. patch embedding: each skip x_i (C_i channels) is average-pooled to one token grid (N tokens) and scaled per
   channel (a depthwise 1x1 projection);
2. n blocks of channel cross-attention (CCA) then spatial cross-attention (SCA), each with a token residual;
3. tokens back to maps, a 1x1 conv, upsampled to x_i's size and merged into x_i: the paper adds them and applies
   BatchNorm and ReLU to the sum (`merge="paper"`); `merge="residual"` adds them to x_i and nothing else, with the
   1x1 conv starting at zero, so the block starts as the identity and the U-Net around it as the stock U-Net.

Tokens are (B, N, C) throughout. No parameter depends on the token grid, so one module serves any input size.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nnunet_dca.config import CHANNEL_SCORES, MERGES, SPATIAL_SCORES

CHOICES = {"merge": MERGES, "channel_scores": CHANNEL_SCORES, "spatial_scores": SPATIAL_SCORES}

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class DepthwiseProjection(nn.Module):
    """The paper's depthwise 1x1 projection of tokens: a per-channel scale and bias, nothing mixes channels.

    The weight keeps a depthwise conv's shape (C, 1, 1, 1[, 1]) so a state dict of the paper's layout loads as is.
    tokens (B, N, C) -> (B, N, C)
    """

    def __init__(self, channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, 1, *[1] * spatial_dims))
        self.bias = nn.Parameter(torch.empty(channels))
        # PyTorch's default init of a depthwise 1x1 conv (fan_in 1) is U(-1, 1) for weight and bias
        nn.init.uniform_(self.weight, -1.0, 1.0)
        nn.init.uniform_(self.bias, -1.0, 1.0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, tokens, self.weight.view(-1))


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """float16 and bfloat16 as float32; float32 and float64 unchanged."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale), float32. q (..., L, d), k (..., M, d) -> (..., L, M), each row sums to one.

    The scores and the softmax are float32 under any autocast, as the fused kernels accumulate them: float16
    scores lose the digits that decide the softmax once they reach the thousands, and overflow past 65,504.
    """
    with torch.autocast(q.device.type, enabled=False):
        return torch.softmax(at_least_float32(q) @ at_least_float32(k).transpose(-2, -1) * scale, dim=-1)


# the smallest norm a query or key is divided by, as F.normalize's default: a zero vector stays zero
NORM_EPS = 1e-12

# float32's epsilon squared: a probability below it moves no output by more than a millionth of float32's round-off
NEGLIGIBLE_PROBABILITY = torch.finfo(torch.float32).eps ** 2


def flush_negligible(probabilities: torch.Tensor) -> torch.Tensor:
    """Probabilities below NEGLIGIBLE_PROBABILITY set to zero, out of place.

    Channel attention's rows sum scores over all N tokens, so with a few hundred tokens a row's softmax reaches
    subnormal floats (below 1.2e-38), and on x86 CPUs a matrix product with subnormal operands runs about a hundred
    times slower (measured: 5% subnormal entries, 1.1 ms -> 119 ms for one 784 x 480 x 256 product).
    """
    return probabilities.masked_fill(probabilities < NEGLIGIBLE_PROBABILITY, 0.0)


def qk_norm_scale(keys: int) -> float:
    """QK-norm's starting scale of cosine scores over `keys` keys, log2(L^2 - L) (Henry et al. 2020): for 140 tokens
    14.2, for 1024 tokens 20.0, for 224 channels 15.6; 1 for a single key."""
    return math.log2(max(keys * keys - keys, 2))


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v, explicit. q (..., L, d), k (..., M, d), v (..., M, d_v) -> (..., L, d_v)."""
    return attention_probabilities(q, k, scale).to(v.dtype) @ v


def attention_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """The same as `attention_math` on `scaled_dot_product_attention`, which never materializes L x M.

    The fused (flash) kernels need one head dim for q, k and v. Zero columns appended to v only add zero output
    columns, which are dropped, so padding v to q's head dim is exact. Requires d_v <= d.
    """
    head_dim, value_dim = q.shape[-1], v.shape[-1]
    if value_dim == head_dim:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    padded = F.pad(v, (0, head_dim - value_dim))
    return F.scaled_dot_product_attention(q, k, padded, scale=scale)[..., :value_dim]


def split_heads(tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, h * c) -> (B, h, N, c)"""
    batch, n_tokens, channels = tokens.shape
    return tokens.view(batch, n_tokens, heads, channels // heads).transpose(1, 2)


def merge_heads(tokens: torch.Tensor) -> torch.Tensor:
    """(B, h, N, c) -> (B, N, h * c)"""
    batch, heads, n_tokens, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, n_tokens, heads * channels)


class ChannelCrossAttention(nn.Module):
    """CCA for one stage (paper, section 3.2): the stage's channels attend to the channels of all stages.

    Q from the stage's normalized tokens, K and V from all stages' normalized tokens concatenated along channels.
    Per head the attention matrix is C_i/h x C_sum/h. Its scores Q^T K sum over all N tokens; `scores` says how they
    are normalized before the softmax:
    - "paper": scaled by C_sum^-0.5, as in the paper. Their spread grows with N, and rows collapse onto one channel.
    - "cosine": each channel of Q and K L2-normalized along the tokens, so a score is a cosine in [-1, 1], times a
      learnable per-head temperature starting at `temperature` (XCiT's cross-covariance attention, El-Nouby et al.
      2021).
    - "standardized": each head's score matrix standardized to mean 0 and variance 1 (an InstanceNorm without
      affine, eps 1e-5), as UCTransNet's channel cross-attention (Wang et al. 2022).
    - "qk_norm": the cosines times log2(L^2 - L), L = C_sum/h the keys of a row (QK-norm's starting scale, Henry et
      al. 2020), and the learnable per-head temperature: cosines at temperature 1 leave the rows near uniform.
    tokens (B, N, C_i), context (B, N, C_sum) -> (B, N, C_i)
    """

    def __init__(self, channels: int, context_channels: int, heads: int, spatial_dims: int,
                 scores: str = "paper", temperature: float = 1.0) -> None:
        super().__init__()
        self.heads = heads
        self.scores = scores
        self.scale = context_channels ** -0.5
        self.query = DepthwiseProjection(channels, spatial_dims)
        self.key = DepthwiseProjection(context_channels, spatial_dims)
        self.value = DepthwiseProjection(context_channels, spatial_dims)
        self.out = DepthwiseProjection(channels, spatial_dims)
        if scores in ("cosine", "qk_norm"):
            self.temperature = nn.Parameter(torch.full((heads, 1, 1), float(temperature)))

    def forward(self, tokens: torch.Tensor, context: torch.Tensor, fused: bool = True) -> torch.Tensor:
        if fused and self.scores == "paper":
            parameters = [p.view(-1) for m in (self.query, self.key, self.value, self.out) for p in (m.weight, m.bias)]
            return _ChannelAttention.apply(tokens, context, *parameters, self.heads, self.scale)
        c = split_heads(context, self.heads)  # (B, h, N, C_sum/h)
        attention = self.attention_weights(tokens, context).to(c.dtype)  # (B, h, C_i/h, C_sum/h)
        value_weight, value_bias = (p.view(self.heads, 1, -1) for p in (self.value.weight, self.value.bias))
        # V = c w_v + b_v, so out = V A^T = c (A w_v)^T + (A b_v^T)^T; the output projection scales and shifts the
        # output channels, the rows of A: it folds in the same way. No N x C_sum copy of the context is made.
        out_weight, out_bias = self.out.weight.view(self.heads, -1, 1), self.out.bias.view(self.heads, 1, -1)
        mixing = attention * value_weight * out_weight  # (B, h, C_i/h, C_sum/h)
        offset = (attention @ value_bias.transpose(-2, -1)).transpose(-2, -1) * out_weight.transpose(-2, -1) + out_bias
        return merge_heads(c @ mixing.transpose(-2, -1) + offset)  # offset (B, h, 1, C_i/h)

    def attention_weights(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """softmax of the normalized scores Q^T K, float32: (B, h, C_i/h, C_sum/h), each row sums to one."""
        q = split_heads(self.query(tokens), self.heads)  # (B, h, N, C_i/h)
        c = split_heads(context, self.heads)  # (B, h, N, C_sum/h)
        key_weight, key_bias = (at_least_float32(p).view(self.heads, 1, -1) for p in (self.key.weight, self.key.bias))
        # K = c w_k + b_k scales the context per channel, so the scaling moves onto the small C_i/h x C_sum/h
        # scores instead of an N x C_sum tensor per stage (exact): Q^T K = (Q^T c) w_k + (sum_n Q)^T b_k.
        # Q^T c sums over all N tokens before any scaling; under float16 autocast (nnU-Net's default on CUDA) that
        # sum leaves float16's range at a few thousand tokens. The scores are C_i/h x C_sum/h: float32 costs little,
        # and the normalizations and the temperature run in float32 too.
        with torch.autocast(q.device.type, enabled=False):
            q32, c32 = at_least_float32(q), at_least_float32(c)
            query_sum = q32.sum(dim=-2)  # (B, h, C_i/h)
            scores = (q32.transpose(-2, -1) @ c32) * key_weight + query_sum.unsqueeze(-1) * key_bias
            if self.scores == "paper":
                scores = scores * self.scale
            elif self.scores == "standardized":
                scores = F.instance_norm(scores * self.scale, eps=1e-5)
            else:  # cosines: |K_j|^2 = w_j^2 sum c_j^2 + 2 w_j b_j sum c_j + N b_j^2, from the context's column sums
                key_norms = (key_weight.square() * c32.square().sum(dim=-2, keepdim=True)
                             + 2 * key_weight * key_bias * c32.sum(dim=-2, keepdim=True)
                             + c32.shape[-2] * key_bias.square()).clamp_min(0).sqrt()  # (B, h, 1, C_sum/h)
                query_norms = q32.square().sum(dim=-2).sqrt().unsqueeze(-1)  # (B, h, C_i/h, 1)
                scores = scores / (query_norms.clamp_min(NORM_EPS) * key_norms.clamp_min(NORM_EPS))
                scores = scores * at_least_float32(self.temperature)
                if self.scores == "qk_norm":
                    scores = scores * qk_norm_scale(scores.shape[-1])
            return flush_negligible(torch.softmax(scores, dim=-1))


class _ChannelAttention(torch.autograd.Function):
    """`ChannelCrossAttention.forward`'s explicit path as one operation with its backward written out: the same
    values and gradients, with fewer passes over the (B, h, C_i/h, C_sum/h) matrices, which at nnU-Net's batches
    are as large as the tokens, and only the softmax, the unscaled scores and the inputs kept for backward.

    Per head, with q = t w_q + b_q (t the stage's normalized tokens, N x C_i/h) and c the context (N x C_sum/h):
        S = ((q^T c) w_k + (1^T q)^T b_k) * scale,  P = softmax(S),  M = w_o P w_v,  out = c M^T + w_o P b_v + b_o
    where w_k, w_v scale columns and w_o rows. Computed in float32 (at least), autocast off; out in the context's
    dtype. tokens (B, N, C_i), context (B, N, C_sum) -> (B, N, C_i)
    """

    @staticmethod
    def forward(ctx: Any, tokens: torch.Tensor, context: torch.Tensor, query_weight: torch.Tensor,
                query_bias: torch.Tensor, key_weight: torch.Tensor, key_bias: torch.Tensor, value_weight: torch.Tensor,
                value_bias: torch.Tensor, out_weight: torch.Tensor, out_bias: torch.Tensor, heads: int,
                scale: float) -> torch.Tensor:
        with torch.autocast(context.device.type, enabled=False):
            t, c = (at_least_float32(split_heads(x, heads)) for x in (tokens, context))  # (B, h, N, C/h)
            rows = _per_head(heads, query_weight, query_bias, out_weight, out_bias)  # (h, 1, C_i/h) each
            columns = _per_head(heads, key_weight, key_bias, value_weight, value_bias)  # (h, 1, C_sum/h) each
            (w_q, b_q, w_o, b_o), (w_k, b_k, w_v, b_v) = rows, columns
            q = torch.addcmul(b_q, t, w_q)
            unscaled = q.transpose(-2, -1) @ c  # q^T c: (B, h, C_i/h, C_sum/h)
            query_sum = q.sum(dim=-2)  # (B, h, C_i/h)
            scores = torch.addcmul(query_sum.unsqueeze(-1) * (b_k * scale), unscaled, w_k * scale)
            p = flush_negligible(torch.softmax(scores, dim=-1))
            del scores
            mixing = p * (w_v * w_o.transpose(-2, -1))
            offset = (p @ b_v.transpose(-2, -1)).transpose(-2, -1) * w_o + b_o  # (B, h, 1, C_i/h)
            # a product, then the sum: baddbmm with a broadcast offset runs several times slower on CPU
            out = c @ mixing.transpose(-2, -1) + offset
        ctx.save_for_backward(t, c, unscaled, query_sum, p, query_weight, query_bias, key_weight, key_bias,
                              value_weight, value_bias, out_weight)
        ctx.heads, ctx.scale, ctx.dtypes = heads, scale, (tokens.dtype, context.dtype)
        return merge_heads(out).to(context.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        t, c, unscaled, query_sum, p, *parameters = ctx.saved_tensors
        heads, scale = ctx.heads, ctx.scale
        with torch.autocast(c.device.type, enabled=False):
            (w_q, b_q, w_o), (w_k, b_k, w_v, b_v) = (_per_head(heads, *parameters[:2], parameters[-1]),
                                                     _per_head(heads, *parameters[2:6]))
            g = at_least_float32(split_heads(grad.contiguous(), heads))  # dL/d out: (B, h, N, C_i/h)
            # out = c M^T + offset
            grad_mixing = g.transpose(-2, -1) @ c  # (B, h, C_i/h, C_sum/h)
            grad_offset = g.sum(dim=-2, keepdim=True)  # (B, h, 1, C_i/h)
            grad_context = g @ (p * (w_v * w_o.transpose(-2, -1)))
            # M = w_o P w_v and offset = w_o (P b_v) + b_o
            weighted = (p * grad_mixing).sum(dim=0)  # (h, C_i/h, C_sum/h)
            grad_w_v = (w_o @ weighted).view(-1)
            grad_w_o = (weighted @ w_v.transpose(-2, -1)).transpose(-2, -1)
            grad_w_o = grad_w_o + (grad_offset * (p @ b_v.transpose(-2, -1)).transpose(-2, -1)).sum(dim=0)
            grad_b_o = grad_offset.sum(dim=0).view(-1)
            offset_rows = (grad_offset * w_o).transpose(-2, -1)  # (B, h, C_i/h, 1)
            grad_b_v = (offset_rows.transpose(-2, -1) @ p).sum(dim=0).view(-1)
            grad_p = torch.addcmul(offset_rows * b_v, grad_mixing, w_v * w_o.transpose(-2, -1))
            del grad_mixing
            # P = softmax(S)
            grad_scores = grad_p.sub_((grad_p * p).sum(dim=-1, keepdim=True)).mul_(p).mul_(scale)
            del grad_p
            # S = (q^T c) w_k + (1^T q)^T b_k
            grad_w_k = (grad_scores * unscaled).sum(dim=(0, 2)).view(-1)
            grad_b_k = (query_sum.unsqueeze(-2) @ grad_scores).sum(dim=0).view(-1)
            grad_unscaled = grad_scores * w_k  # (B, h, C_i/h, C_sum/h)
            grad_q = c @ grad_unscaled.transpose(-2, -1) + (grad_scores @ b_k.transpose(-2, -1)).transpose(-2, -1)
            q = torch.addcmul(b_q, t, w_q)
            grad_context = grad_context.add_(q @ grad_unscaled)
            # q = t w_q + b_q
            grad_tokens = grad_q * w_q
            grad_w_q = (grad_q * t).sum(dim=(0, 2)).view(-1)
            grad_b_q = grad_q.sum(dim=(0, 2)).view(-1)
        tokens_dtype, context_dtype = ctx.dtypes
        return (merge_heads(grad_tokens).to(tokens_dtype), merge_heads(grad_context).to(context_dtype),
                grad_w_q, grad_b_q, grad_w_k, grad_b_k, grad_w_v, grad_b_v, grad_w_o.reshape(-1), grad_b_o,
                None, None)


def _per_head(heads: int, *vectors: torch.Tensor) -> list[torch.Tensor]:
    """Per-channel vectors (C,) as (h, 1, C/h), float32 at least, to broadcast over (B, h, rows, C/h)."""
    return [at_least_float32(v).view(heads, 1, -1) for v in vectors]


class SpatialCrossAttention(nn.Module):
    """SCA for one stage (paper, section 3.3): every token attends to every token, queries and keys from all stages.

    Q and K from all stages' normalized tokens concatenated along channels, V from the stage's normalized tokens.
    Per head the attention matrix is N x N. `scores` says how its scores Q K^T are normalized before the softmax:
    - "paper": scaled by (C_sum/h)^-0.5, as in the paper. Tokens pooled from early features differ little, and the
      rows stay near uniform: a global average.
    - "qk_norm": each query and key L2-normalized over its head's channels, so a score is a cosine in [-1, 1], times
      log2(N^2 - N) (QK-norm's starting scale for N tokens, Henry et al. 2020) and a learnable per-head temperature
      starting at `temperature`.
    tokens (B, N, C_i), context (B, N, C_sum) -> (B, N, C_i)
    """

    def __init__(self, channels: int, context_channels: int, heads: int, spatial_dims: int,
                 scores: str = "paper", temperature: float = 1.0) -> None:
        super().__init__()
        self.heads = heads
        self.scores = scores
        self.scale = (context_channels // heads) ** -0.5
        self.query = DepthwiseProjection(context_channels, spatial_dims)
        self.key = DepthwiseProjection(context_channels, spatial_dims)
        self.value = DepthwiseProjection(channels, spatial_dims)
        self.out = DepthwiseProjection(channels, spatial_dims)
        if scores == "qk_norm":
            self.temperature = nn.Parameter(torch.full((heads, 1, 1), float(temperature)))

    def forward(self, tokens: torch.Tensor, context: torch.Tensor, fused: bool = True,
                every_stage_values: torch.Tensor | None = None, columns: slice | None = None) -> torch.Tensor:
        """`every_stage_values`, if given: `values` of every stage side by side per head, (B, h, N, C_sum/h), of which
        this stage's are `columns`. They fill the queries' head dim as the fused kernels need, where this stage's
        values alone would be zero-padded to it: the other stages' output columns are dropped, as the padding's
        would be (exact), and one tensor serves every stage instead of a padded copy each."""
        q, k, scale = self.queries_and_keys(context)
        if every_stage_values is not None:
            return merge_heads(F.scaled_dot_product_attention(q, k, every_stage_values, scale=scale)[..., columns])
        attend = attention_fused if fused else attention_math
        return merge_heads(attend(q, k, split_heads(self.values(tokens), self.heads), scale))

    def values(self, tokens: torch.Tensor) -> torch.Tensor:
        """The values with the output projection folded in, (B, N, C_i): A (V w_o + b_o) = (A V) w_o + b_o, because
        each row of A sums to one, so w_o and b_o act on V. With the keys' folding (`queries_and_keys`) each stage
        projects the context once and its tokens once, instead of twice each (exact)."""
        out_weight = self.out.weight.view(-1)
        value_weight = self.value.weight.view(-1) * out_weight
        value_bias = self.value.bias * out_weight + self.out.bias
        return torch.addcmul(value_bias, tokens, value_weight)

    def queries_and_keys(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Queries and keys as the attention uses them, (B, h, N, C_sum/h) each, and the scale of their products:
        the softmax of scale * q k^T equals that of the normalized scores.

        "paper": (Q)(c w_k + b_k)^T = (Q w_k) c^T + (Q b_k) 1^T. The second term adds one value to every score of a
        row, which softmax cancels, so the keys are the context itself and w_k scales the queries. b_k stays in the
        graph with a zero gradient: DDP requires every parameter to take part.
        "qk_norm": the normalization needs the keys themselves; the scale and the temperature go into the queries,
        normalized in float32 (a float16 sum of squares over the head's channels overflows past 65,504).
        """
        if self.scores == "paper":
            key_weight = self.key.weight.view(-1)
            query_weight = self.query.weight.view(-1) * key_weight
            query_bias = self.query.bias * key_weight + 0 * self.key.bias
            q = split_heads(torch.addcmul(query_bias, context, query_weight), self.heads)
            return q, split_heads(context, self.heads), self.scale
        with torch.autocast(context.device.type, enabled=False):
            c32 = at_least_float32(context)
            q, k = (F.normalize(split_heads(torch.addcmul(at_least_float32(p.bias), c32, at_least_float32(p.weight)
                                                          .view(-1)), self.heads), dim=-1, eps=NORM_EPS)
                    for p in (self.query, self.key))
            q = q * (at_least_float32(self.temperature) * qk_norm_scale(context.shape[1]))
        return q.to(context.dtype), k.to(context.dtype), 1.0

    def attention_weights(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """softmax of the normalized scores Q K^T, float32: (B, h, N, N), each row sums to one. `tokens` take no
        part (the values come from them); the argument keeps the signature of the channel attention's."""
        return attention_probabilities(*self.queries_and_keys(context))


class DCABlock(nn.Module):
    """One DCA block: channel cross-attention, then spatial cross-attention, each with a token residual.

    Each attention normalizes every stage's tokens with its own LayerNorm (eps 1e-6) and concatenates them as the
    shared context. tokens: a list of (B, N, C_i) -> a list of the same shapes
    """

    def __init__(self, features: Sequence[int], channel_heads: Sequence[int], spatial_heads: Sequence[int],
                 channel_attention: bool, spatial_attention: bool, spatial_dims: int, channel_scores: str = "paper",
                 spatial_scores: str = "paper", temperature: float = 1.0) -> None:
        super().__init__()
        context_channels = sum(features)
        self.channel_norms = self.channel_attentions = self.spatial_norms = self.spatial_attentions = None
        if channel_attention:
            self.channel_norms = nn.ModuleList(nn.LayerNorm(c, eps=1e-6) for c in features)
            self.channel_attentions = nn.ModuleList(
                ChannelCrossAttention(c, context_channels, h, spatial_dims, channel_scores, temperature)
                for c, h in zip(features, channel_heads))
        if spatial_attention:
            self.spatial_norms = nn.ModuleList(nn.LayerNorm(c, eps=1e-6) for c in features)
            self.spatial_attentions = nn.ModuleList(
                SpatialCrossAttention(c, context_channels, h, spatial_dims, spatial_scores, temperature)
                for c, h in zip(features, spatial_heads))
        # with one head count for every stage, the stages' values per head together are as wide as the queries
        self.value_columns = None
        if spatial_attention and len(set(spatial_heads)) == 1:
            ends = [0, *itertools.accumulate(c // spatial_heads[0] for c in features)]
            self.value_columns = [slice(start, end) for start, end in zip(ends, ends[1:])]

    def forward(self, tokens: list[torch.Tensor], fused: bool = True) -> list[torch.Tensor]:
        if self.channel_attentions is not None:
            normed = [norm(t) for norm, t in zip(self.channel_norms, tokens)]
            context = torch.cat(normed, dim=-1)
            tokens = [t + cca(n, context, fused) for t, n, cca in zip(tokens, normed, self.channel_attentions)]
        if self.spatial_attentions is not None:
            normed = [norm(t) for norm, t in zip(self.spatial_norms, tokens)]
            context = torch.cat(normed, dim=-1)
            if fused and self.value_columns is not None:
                values = torch.cat([split_heads(sca.values(n), sca.heads)
                                    for n, sca in zip(normed, self.spatial_attentions)], dim=-1)
                tokens = [t + sca(n, context, fused, values, columns) for t, n, sca, columns
                          in zip(tokens, normed, self.spatial_attentions, self.value_columns)]
            else:
                tokens = [t + sca(n, context, fused) for t, n, sca in zip(tokens, normed, self.spatial_attentions)]
        return tokens


class DCA(nn.Module):
    """Dual Cross-Attention over a U-Net's skip connections (Ates, Mohan, Celik 2023).

    Args:
        features: channels of each skip, shallow to deep.
        token_grid: the pooled token grid, an int (the same along every axis), a tuple, or None for the paper's
            rule: the deepest skip's spatial size, capped at `max_tokens` tokens (pooled further, aspect ratio kept).
        max_tokens: the cap of the paper's rule; None for uncapped. Spatial attention costs O(N^2) in tokens N.
        n_blocks: DCA blocks in sequence.
        channel_heads, spatial_heads: heads of channel and spatial attention, an int or one per skip.
        channel_attention, spatial_attention: switch either attention off, for ablations.
        spatial_dims: 2 or 3.
        fused_attention: run spatial attention on the fused `scaled_dot_product_attention` kernels (default)
            rather than the explicit math; both compute the same. A plain attribute, switchable at any time.
        merge: how the refined tokens, back at each skip's size through a 1x1 conv, join the skip. "paper":
            ReLU(BatchNorm(skip + branch)), the paper's block. "residual": skip + branch, the 1x1 conv initialized
            to zero, so the block starts as the identity and grows from there, as nnU-Net's residual encoders
            start each residual branch at zero; no BatchNorm, so no running statistics and nothing to synchronize
            across processes.
        channel_scores: "paper" (default), "cosine" or "standardized": how channel attention normalizes its scores
            (see ChannelCrossAttention).
        spatial_scores: "paper" (default) or "qk_norm": how spatial attention normalizes its scores (see
            SpatialCrossAttention).
        temperature: where the learnable temperatures of "cosine" and "qk_norm" scores start (default 1).

    Input: a list of skips, each (B, C_i, *spatial_i) with any spatial size. Output: a list of the same shapes.
    """

    def __init__(self, features: Sequence[int], token_grid: int | Sequence[int] | None = None,
                 max_tokens: int | None = 1024, n_blocks: int = 1, channel_heads: int | Sequence[int] = 1,
                 spatial_heads: int | Sequence[int] = 4, channel_attention: bool = True,
                 spatial_attention: bool = True, spatial_dims: int = 2, fused_attention: bool = True,
                 merge: str = "paper", channel_scores: str = "paper", spatial_scores: str = "paper",
                 temperature: float = 1.0) -> None:
        super().__init__()
        check_choices(merge=merge, channel_scores=channel_scores, spatial_scores=spatial_scores)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if isinstance(features, int) or len(features) == 0 or not all(_is_positive_int(c) for c in features):
            raise ValueError(f"features must be a non-empty list of positive channel counts, got {features!r}")
        self.features = [int(c) for c in features]
        self.spatial_dims = spatial_dims
        self.token_grid = _check_token_grid(token_grid, spatial_dims)
        if max_tokens is not None and not _is_positive_int(max_tokens):
            raise ValueError(f"max_tokens must be a positive int or None (uncapped), got {max_tokens!r}")
        self.max_tokens = max_tokens
        if not _is_positive_int(n_blocks):
            raise ValueError(f"n_blocks must be a positive int, got {n_blocks!r}")
        channel_heads = _heads_per_stage(channel_heads, self.features, "channel_heads")
        spatial_heads = _heads_per_stage(spatial_heads, self.features, "spatial_heads")
        self.fused_attention = fused_attention

        self.patch_embeddings = nn.ModuleList(DepthwiseProjection(c, spatial_dims) for c in self.features)
        self.blocks = nn.ModuleList(
            DCABlock(self.features, channel_heads, spatial_heads, channel_attention, spatial_attention, spatial_dims,
                     channel_scores, spatial_scores, temperature)
            for _ in range(n_blocks))
        self.merge = merge
        self.output_convs = nn.ModuleList(CONV[spatial_dims](c, c, kernel_size=1) for c in self.features)
        if merge == "paper":
            self.output_norms = nn.ModuleList(BATCH_NORM[spatial_dims](c) for c in self.features)
        else:
            self.output_norms = None
            for conv in self.output_convs:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # weights of the other merge fail inside torch with a list of keys; name the two merges and the fix instead
        holds_dca = any(key.startswith(prefix) for key in state_dict)
        saved_merge = "paper" if any(key.startswith(prefix + "output_norms.") for key in state_dict) else "residual"
        if holds_dca and saved_merge != self.merge:
            raise RuntimeError(
                f"these DCA weights were trained with merge {saved_merge!r} and the network was built with "
                f"{self.merge!r}. Build it with merge {saved_merge!r}: the dca block's \"merge\" key (in a model "
                f"folder's plans.json, a configuration without \"dca_resolved\" was trained before nnunet-dca saved "
                f"its settings, with the paper's merge: add \"dca\": {{\"merge\": \"paper\"}} there), or "
                f"nnUNetTrainerDCA_Paper")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, skips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self._check_inputs(skips)
        grid = self.grid_for(skips)
        tokens = [embed(_pool_to_tokens(x, grid)) for x, embed in zip(skips, self.patch_embeddings)]
        for block in self.blocks:
            tokens = block(tokens, self.fused_attention)
        return [self._back_to_skip(t, x, grid, stage) for stage, (t, x) in enumerate(zip(tokens, skips))]

    def grid_for(self, skips: Sequence[torch.Tensor]) -> tuple[int, ...]:
        """The token grid used for these skips: `token_grid` if set, else the paper's rule with the cap."""
        if self.token_grid is not None:
            return self.token_grid
        return capped_grid(tuple(skips[-1].shape[2:]), self.max_tokens)

    def _back_to_skip(self, tokens: torch.Tensor, skip: torch.Tensor, grid: tuple[int, ...],
                      stage: int) -> torch.Tensor:
        batch, _, channels = tokens.shape
        # contiguous: a reshaped transpose would be a channels-last view, and that layout would follow the
        # refined skip into the decoder, whose convolutions then run on slower paths
        tokens = tokens.transpose(1, 2).contiguous().view(batch, channels, *grid)
        # The paper upsamples, then applies the 1x1 conv. Both are linear and interpolation weights sum to one,
        # so they commute exactly; the conv at token resolution costs a fraction of the conv at skip resolution.
        refined = self.output_convs[stage](tokens)
        if self.merge == "residual":
            return _upsample_onto(refined, skip)
        norm = self.output_norms[stage]
        if not self.training:
            return torch.relu_(norm(_upsample_onto(refined, skip)))
        # Training: the skip-resolution tail is recomputed in backward instead of keeping its two skip-sized
        # activations (the sum and the ReLU output); its inputs, the skip and the token-resolution map, are kept
        # alive by the encoder and by this function anyway.
        # under DDP (nnU-Net converts every BatchNorm to SyncBatchNorm) the statistics span every process's batch
        group = _distributed_group(norm)
        if group is None and skip.numel() // channels < 2:
            raise ValueError("DCA's BatchNorm needs more than one value per channel in training (got batch size x "
                             f"skip size = {skip.numel() // channels}); use a larger batch or patch")
        out, mean, inverse_std, count = checkpoint(_normalize_batch_and_relu, skip, refined, norm.weight, norm.bias,
                                                   norm.eps, group, use_reentrant=False)
        _update_running_stats(norm, mean, inverse_std, count)
        return out

    def _check_inputs(self, skips: Sequence[torch.Tensor]) -> None:
        if len(skips) != len(self.features):
            raise ValueError(f"DCA was built for {len(self.features)} skips (features {self.features}), "
                             f"got {len(skips)} inputs")
        rank = 2 + self.spatial_dims
        for i, (x, channels) in enumerate(zip(skips, self.features)):
            if x.dim() != rank:
                raise ValueError(f"skip {i} has shape {tuple(x.shape)}: DCA with spatial_dims={self.spatial_dims} "
                                 f"expects {rank}-D inputs (batch, channels, {self.spatial_dims} spatial axes)")
            if x.shape[1] != channels:
                raise ValueError(f"skip {i} has {x.shape[1]} channels, DCA was built with features[{i}]={channels}")
            if x.shape[0] != skips[0].shape[0]:
                raise ValueError(f"skips have different batch sizes: skip 0 has {skips[0].shape[0]}, "
                                 f"skip {i} has {x.shape[0]}")


def check_choices(**choices: str) -> None:
    """Raises ValueError for a `merge`, `channel_scores` or `spatial_scores` that is none of its choices."""
    for name, value in choices.items():
        allowed = CHOICES[name]
        if value not in allowed:
            raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def capped_grid(size: tuple[int, ...], max_tokens: int | None) -> tuple[int, ...]:
    """`size`, shrunk by one common factor per axis until it holds at most `max_tokens` tokens (None: no cap)."""
    if max_tokens is None or math.prod(size) <= max_tokens:
        return size
    grid, shrinking = list(size), list(range(len(size)))
    while shrinking:
        factor = (max_tokens / math.prod(size[a] for a in shrinking)) ** (1 / len(shrinking))
        too_thin = [a for a in shrinking if size[a] * factor < 1]
        if not too_thin:
            for a in shrinking:
                # the tolerance keeps an exact product (20 * 0.5 computed as 9.9999...) from losing a whole row
                grid[a] = int(size[a] * factor + 1e-6)
            break
        # an axis that would shrink below one token keeps one, and the others share the whole budget
        for a in too_thin:
            grid[a] = 1
            shrinking.remove(a)
    return tuple(grid)


def _upsample_onto(refined: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """skip + refined upsampled to the skip's size (bilinear or trilinear, align_corners=True)."""
    if refined.shape[2:] == skip.shape[2:]:
        return refined + skip
    upsampled = upsample_linear(refined, tuple(skip.shape[2:]))
    if torch.is_grad_enabled():
        # the upsampled map is a view of a product's output: autograd records an in-place write into a view by
        # copying the whole gradient at skip resolution in backward, which costs more than a fresh sum
        return upsampled + skip
    # without a graph, in place on the fresh upsampled map only (never on an input): at skip resolution an
    # allocation costs as much as the addition
    return upsampled.add_(skip)


def upsample_linear(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """F.interpolate(x, size, mode="bilinear" or "trilinear", align_corners=True), as one small matrix product per
    axis. (B, C, *spatial) -> (B, C, *size), contiguous.

    Linear interpolation is separable. On CPU the products run several times faster than F.interpolate, which
    converts memory layouts at the output's size, in forward and in backward.
    """
    for axis in reversed(range(x.dim() - 2)):
        size_in, size_out = x.shape[2 + axis], size[axis]
        if size_in == size_out:
            continue
        weights = _interpolation_weights(size_out, size_in, x)
        if axis == x.dim() - 3:  # the last axis: (..., size_in) @ (size_in, size_out)
            x = x @ weights.transpose(0, 1)
        else:  # (size_out, size_in) @ (..., size_in, the axes after it)
            leading, trailing = x.shape[:2 + axis], x.shape[3 + axis:]
            x = (weights @ x.reshape(*leading, size_in, math.prod(trailing))).view(*leading, size_out, *trailing)
    return x


def _interpolation_weights(size_out: int, size_in: int, like: torch.Tensor) -> torch.Tensor:
    """(size_out, size_in): linear interpolation with align_corners=True, output point i at input position
    p_i = i (size_in - 1) / (size_out - 1); its weight on input point j is the hat function max(0, 1 - |p_i - j|)."""
    step = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    dtype = torch.promote_types(like.dtype, torch.float32)  # float16 positions lose their fractions past 1024
    positions = torch.arange(size_out, device=like.device, dtype=dtype) * step
    inputs = torch.arange(size_in, device=like.device, dtype=dtype)
    return (1 - (positions[:, None] - inputs).abs()).clamp_(min=0).to(like.dtype)


def _normalize_batch_and_relu(skip: torch.Tensor, refined: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                              eps: float, group: dist.ProcessGroup | None
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int | torch.Tensor]:
    """ReLU(BatchNorm(skip + upsampled refined)) with batch statistics, without touching running statistics.

    The statistics are over this process's batch, or over the batches of every process in `group`. Returns the
    output, the batch's per-channel mean and inverse standard deviation (float32, as BatchNorm keeps them under
    autocast) and the number of values per channel they are over, from which the caller updates the running
    statistics once.
    """
    x = _upsample_onto(refined, skip)
    if group is None:
        # the op under F.batch_norm, which also returns the statistics it computed
        out, mean, inverse_std = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        return torch.relu_(out), mean, inverse_std, x.numel() // x.shape[1]
    axes, per_channel = [0, *range(2, x.dim())], (1, -1, *[1] * (x.dim() - 2))
    x32 = at_least_float32(x)
    # the count travels with the sums (processes' batches may differ) and stays a tensor: no host sync per stage
    sums = _AllReduceSum.apply(torch.cat([x32.sum(axes), x32.new_tensor([x.numel() // x.shape[1]])]), group)
    count = sums[-1]
    mean = sums[:-1] / count
    # two passes, as BatchNorm: the variance from centered values, not from E[x^2] - E[x]^2
    centered = x32 - mean.view(per_channel)
    inverse_std = torch.rsqrt(_AllReduceSum.apply(centered.square().sum(axes), group) / count + eps)
    out = centered * (inverse_std * weight).view(per_channel) + bias.view(per_channel)
    return torch.relu_(out.to(x.dtype)), mean, inverse_std, count


class _AllReduceSum(torch.autograd.Function):
    """The sum of a tensor over the processes of a group; its gradient is the sum of the processes' gradients.

    Each process's loss depends on the sum through every process, so the gradient with respect to one process's
    summand is the sum of all the processes' gradients with respect to the sum.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _AllReduceSum.apply(grad, ctx.group), None


def _distributed_group(norm: nn.Module) -> dist.ProcessGroup | None:
    """The group of processes whose batches DCA's BatchNorm spans (the SyncBatchNorm's own group, else all
    processes), or None outside a group of more than one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = getattr(norm, "process_group", None)
    if group is None:
        group = dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def _update_running_stats(norm: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, inverse_std: torch.Tensor,
                          count: int | torch.Tensor) -> None:
    """BatchNorm's update of its running statistics from one batch's statistics over `count` values per channel."""
    with torch.no_grad():
        biased_var = inverse_std.pow(-2) - norm.eps
        norm.running_mean.lerp_(mean, norm.momentum)
        norm.running_var.lerp_(biased_var * (count / (count - 1)), norm.momentum)
        norm.num_batches_tracked.add_(1)


def _pool_to_tokens(x: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """(B, C, *spatial) -> (B, N, C), N = prod(grid), by adaptive average pooling; a skip of the grid's size is passed
    through (pooling would copy it, forward and backward)."""
    if tuple(x.shape[2:]) != grid:
        x = (F.adaptive_avg_pool2d if len(grid) == 2 else F.adaptive_avg_pool3d)(x, grid)
    return x.flatten(2).transpose(1, 2)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_token_grid(token_grid: int | Sequence[int] | None, spatial_dims: int) -> tuple[int, ...] | None:
    if token_grid is None:
        return None
    if _is_positive_int(token_grid):
        return (token_grid,) * spatial_dims
    if (isinstance(token_grid, (list, tuple)) and len(token_grid) == spatial_dims
            and all(_is_positive_int(g) for g in token_grid)):
        return tuple(token_grid)
    raise ValueError(f"token_grid must be None, a positive int or {spatial_dims} positive ints, got {token_grid!r}")


def _heads_per_stage(heads: int | Sequence[int], features: list[int], name: str) -> list[int]:
    per_stage = [heads] * len(features) if _is_positive_int(heads) else list(heads)
    if len(per_stage) != len(features) or not all(_is_positive_int(h) for h in per_stage):
        raise ValueError(f"{name} must be a positive int or one per skip ({len(features)}), got {heads!r}")
    context_channels = sum(features)
    for stage, (h, channels) in enumerate(zip(per_stage, features)):
        if channels % h or context_channels % h:
            raise ValueError(f"{name}={h} at stage {stage} must divide both the stage's channels ({channels}) "
                             f"and the channels of all stages together ({context_channels})")
    return per_stage


_REFERENCE_KEYS = [
    (r"^avg_map\.(\d+)\.proj\.depthwise\.", r"patch_embeddings.\1."),
    (r"^attention\.(\d+)\.channel_norm\.", r"blocks.\1.channel_norms."),
    (r"^attention\.(\d+)\.spatial_norm\.", r"blocks.\1.spatial_norms."),
    (r"^attention\.(\d+)\.c_attention\.", r"blocks.\1.channel_attentions."),
    (r"^attention\.(\d+)\.s_attention\.", r"blocks.\1.spatial_attentions."),
    (r"\.q_map\.proj\.depthwise\.", r".query."),
    (r"\.k_map\.proj\.depthwise\.", r".key."),
    (r"\.v_map\.proj\.depthwise\.", r".value."),
    (r"\.projection\.proj\.depthwise\.", r".out."),
    (r"^upconvs\.(\d+)\.conv\.conv\.", r"output_convs.\1."),
    (r"^bn_relu\.(\d+)\.0\.", r"output_norms.\1."),
]


def state_dict_from_reference(reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames a state dict of the paper's reference code (its `DCA` module) to this module's names.

    Shapes and the order of parameters are the same in both; only the names differ, for example
    `attention.0.c_attention.2.q_map.proj.depthwise.weight` -> `blocks.0.channel_attentions.2.query.weight`.
    Use: `dca.load_state_dict(state_dict_from_reference(reference_model.state_dict()))`.
    """
    renamed = {}
    for key, value in reference.items():
        for pattern, replacement in _REFERENCE_KEYS:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed
