"""DCA written the naive way, as the paper's code computes it: the yardstick for tests and benchmarks.

It materializes every attention matrix (N x N per head for spatial attention), applies the depthwise projections as
grouped convolutions on token maps, and upsamples before the output 1x1 conv, all in the paper's order. Its
sub-modules carry the names of the paper's reference code, so `nnunet_dca.dca.state_dict_from_reference` maps its
state dict onto `nnunet_dca.DCA`. Use `nnunet_dca.DCA` for real work.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_dca.dca import BATCH_NORM, CONV, check_choices

INTERPOLATION = {2: "bilinear", 3: "trilinear"}


def _depthwise_projection(channels: int, spatial_dims: int) -> nn.Module:
    """A container laid out as the reference's `depthwise_projection`: `.proj.depthwise` is the grouped 1x1 conv."""
    holder, proj = nn.Module(), nn.Module()
    proj.depthwise = CONV[spatial_dims](channels, channels, kernel_size=1, groups=channels)
    holder.proj = proj
    return holder


def _attention_pair(query_channels: int, key_channels: int, value_channels: int, out_channels: int,
                    spatial_dims: int, heads: int, scores: str, temperature: float) -> nn.Module:
    pair = nn.Module()
    pair.q_map = _depthwise_projection(query_channels, spatial_dims)
    pair.k_map = _depthwise_projection(key_channels, spatial_dims)
    pair.v_map = _depthwise_projection(value_channels, spatial_dims)
    pair.projection = _depthwise_projection(out_channels, spatial_dims)
    if scores in ("cosine", "qk_norm"):
        pair.temperature = nn.Parameter(torch.full((heads, 1, 1), float(temperature)))
    if scores == "standardized":  # UCTransNet's psi
        pair.psi = nn.InstanceNorm2d(heads)
    return pair


class NaiveDCA(nn.Module):
    """Dual Cross-Attention (Ates, Mohan, Celik 2023), step by step, materializing attention.

    Same arguments as `nnunet_dca.DCA` except that `token_grid` is required (a tuple or an int). The score
    normalizations are written as their papers write them: cosine scores from queries and keys normalized with
    F.normalize (XCiT), standardized scores through an InstanceNorm2d over the heads (UCTransNet), QK-norm likewise.
    Input: a list of skips (B, C_i, *spatial_i). Output: a list of the same shapes.
    `attention_weights` holds the attention matrices of the last call: per kind ("channel", "spatial"), per block,
    per stage, (B, h, C_i/h, C_sum/h) and (B, h, N, N).
    """

    def __init__(self, features: Sequence[int], token_grid: int | Sequence[int], n_blocks: int = 1,
                 channel_heads: int = 1, spatial_heads: int = 4, channel_attention: bool = True,
                 spatial_attention: bool = True, spatial_dims: int = 2, merge: str = "paper",
                 channel_scores: str = "paper", spatial_scores: str = "paper", temperature: float = 1.0) -> None:
        super().__init__()
        check_choices(merge=merge, channel_scores=channel_scores, spatial_scores=spatial_scores)
        self.merge, self.channel_scores, self.spatial_scores = merge, channel_scores, spatial_scores
        self.attention_weights: dict[str, list[list[torch.Tensor]]] = {}
        total = sum(features)
        self.features, self.spatial_dims = list(features), spatial_dims
        self.grid = (token_grid,) * spatial_dims if isinstance(token_grid, int) else tuple(token_grid)
        self.channel_heads, self.spatial_heads = channel_heads, spatial_heads
        self.avg_map = nn.ModuleList(_depthwise_projection(c, spatial_dims) for c in features)
        self.attention = nn.ModuleList()
        for _ in range(n_blocks):
            block = nn.Module()
            if channel_attention:
                block.channel_norm = nn.ModuleList(nn.LayerNorm(c, eps=1e-6) for c in features)
                block.c_attention = nn.ModuleList(_attention_pair(c, total, total, c, spatial_dims, channel_heads,
                                                                  channel_scores, temperature) for c in features)
            if spatial_attention:
                block.spatial_norm = nn.ModuleList(nn.LayerNorm(c, eps=1e-6) for c in features)
                block.s_attention = nn.ModuleList(_attention_pair(total, total, c, c, spatial_dims, spatial_heads,
                                                                  spatial_scores, temperature) for c in features)
            self.attention.append(block)
        self.upconvs = nn.ModuleList()
        for c in features:
            upconv, conv = nn.Module(), nn.Module()
            conv.conv = CONV[spatial_dims](c, c, kernel_size=1)
            upconv.conv = conv
            self.upconvs.append(upconv)
        if merge == "paper":
            self.bn_relu = nn.ModuleList(nn.Sequential(BATCH_NORM[spatial_dims](c), nn.ReLU()) for c in features)
        else:  # "residual": skip + the branch, which starts at zero
            for upconv in self.upconvs:
                nn.init.zeros_(upconv.conv.conv.weight)
                nn.init.zeros_(upconv.conv.conv.bias)

    def project(self, projection: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, C) back to a map, the grouped conv, and to tokens again."""
        batch, _, channels = tokens.shape
        token_map = tokens.transpose(1, 2).reshape(batch, channels, *self.grid)
        return projection.proj.depthwise(token_map).flatten(2).transpose(1, 2)

    def channel_attention(self, pair: nn.Module, query: torch.Tensor, context: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """The stage's output and its attention weights."""
        q, k, v = (self.project(p, t) for p, t in ((pair.q_map, query), (pair.k_map, context), (pair.v_map, context)))
        h = self.channel_heads
        # heads split the channel axis; each head holds a C/h x N block
        q, k, v = (t.transpose(1, 2).unflatten(1, (h, -1)) for t in (q, k, v))
        if self.channel_scores in ("cosine", "qk_norm"):
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)  # along the tokens
        scores = torch.einsum("bhcn,bhkn->bhck", q, k)
        if self.channel_scores == "cosine":
            scores = scores * pair.temperature
        elif self.channel_scores == "qk_norm":
            n = k.shape[2]  # keys per row
            scores = scores * pair.temperature * math.log2(n * n - n)
        else:
            scores = scores * context.shape[-1] ** -0.5
        if self.channel_scores == "standardized":
            scores = pair.psi(scores)
        weights = scores.softmax(dim=-1)
        out = torch.einsum("bhck,bhkn->bhcn", weights, v)
        return self.project(pair.projection, out.flatten(1, 2).transpose(1, 2)), weights

    def spatial_attention(self, pair: nn.Module, values: torch.Tensor, context: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """The stage's output and its attention weights."""
        q, k, v = (self.project(p, t) for p, t in ((pair.q_map, context), (pair.k_map, context), (pair.v_map, values)))
        h = self.spatial_heads
        q, k, v = (t.unflatten(2, (h, -1)) for t in (q, k, v))  # (B, N, h, C/h)
        if self.spatial_scores == "qk_norm":
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)  # over each head's channels
        scores = torch.einsum("bnhc,bmhc->bhnm", q, k)  # N x N per head
        if self.spatial_scores == "qk_norm":
            n = q.shape[1]
            scores = scores * pair.temperature * math.log2(n * n - n)
        else:
            scores = scores * (context.shape[-1] // h) ** -0.5
        weights = scores.softmax(dim=-1)
        out = torch.einsum("bhnm,bmhc->bnhc", weights, v)
        return self.project(pair.projection, out.flatten(2)), weights

    def forward(self, skips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        pool = F.adaptive_avg_pool2d if self.spatial_dims == 2 else F.adaptive_avg_pool3d
        tokens = [self.project(p, pool(x, self.grid).flatten(2).transpose(1, 2)) for p, x in zip(self.avg_map, skips)]
        self.attention_weights = {"channel": [], "spatial": []}
        for block in self.attention:
            if hasattr(block, "c_attention"):
                normed = [norm(t) for norm, t in zip(block.channel_norm, tokens)]
                context = torch.cat(normed, dim=2)
                results = [self.channel_attention(p, n, context) for n, p in zip(normed, block.c_attention)]
                tokens = [t + out for t, (out, _) in zip(tokens, results)]
                self.attention_weights["channel"].append([weights for _, weights in results])
            if hasattr(block, "s_attention"):
                normed = [norm(t) for norm, t in zip(block.spatial_norm, tokens)]
                context = torch.cat(normed, dim=2)
                results = [self.spatial_attention(p, n, context) for n, p in zip(normed, block.s_attention)]
                tokens = [t + out for t, (out, _) in zip(tokens, results)]
                self.attention_weights["spatial"].append([weights for _, weights in results])
        outputs = []
        for stage, (t, x, upconv) in enumerate(zip(tokens, skips, self.upconvs)):
            token_map = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *self.grid)
            upsampled = F.interpolate(token_map, size=x.shape[2:], mode=INTERPOLATION[self.spatial_dims],
                                      align_corners=True)
            merged = upconv.conv.conv(upsampled) + x
            outputs.append(self.bn_relu[stage](merged) if self.merge == "paper" else merged)
        return outputs
