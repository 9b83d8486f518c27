"""Attention statistics a researcher can quote: how peaked DCA's attention is, over every row of many cases.

Channel attention (per stage and block, rows are a stage's channels, each over the C_sum/h channels of its head):
- the effective number of attended channels of a row, exp(entropy): 1 for one-hot, the row's length for uniform;
- the share of rows whose largest probability exceeds 0.5 (collapsed onto one channel).
Spatial attention (per stage and block, rows are query tokens, each over the N tokens):
- the entropy of a row over ln N (1 is uniform, 0 one-hot) and its largest probability times N (1 is uniform),
  over every query token, and over the query tokens whose pooling window holds foreground where a mask is given.

Rows are collected per case (`attention_rows`) and summarized over any set of cases (`summarize`), so one case's
numbers and many cases' numbers come from the same code. `TARGETS` and `target_checks` are issue 21's bounds.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nnunet_dca.recording import StageRecord

# the shares and bounds of a design whose attention neither collapses nor stays uniform (docs/attention.md)
TARGETS = {
    "channel_collapsed_share_at_most": 0.10,  # rows with largest probability above 0.5
    "channel_effective_at_least": 3.0,  # median effective number of attended channels
    "channel_effective_at_most_fraction": 0.25,  # of a row's length, C_sum / h (C_sum with one head)
    "spatial_entropy_ratio_at_most": 0.95,  # mean entropy / ln N ...
    "spatial_max_times_n_at_least": 4.0,  # ... or mean largest probability x N
    "spatial_max_at_most": 0.5,  # and not one-hot: mean largest probability
}
COLLAPSED = 0.5  # a channel row whose largest probability exceeds this attends to one channel


def entropy(rows: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row of probabilities (..., L) -> (...); 0 log 0 counts as 0."""
    rows = rows.double()
    return -(rows * rows.clamp_min(1e-300).log()).sum(-1)


def channel_rows(weights: torch.Tensor) -> dict[str, np.ndarray]:
    """Channel attention (B, h, C_i/h, C_sum/h) -> per row (B * C_i rows): "effective" exp(entropy) and "max"."""
    return {"effective": entropy(weights).exp().flatten().numpy(),
            "max": weights.amax(-1).double().flatten().numpy()}


def spatial_rows(weights: torch.Tensor, query_mask: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Spatial attention (B, h, N, N) -> per query row: "entropy_ratio" (entropy / ln N) and "max_times_n"; with a
    query mask (B, N) of booleans, only its query tokens' rows (of every head)."""
    n = weights.shape[-1]
    ratio = entropy(weights) / math.log(n) if n > 1 else torch.zeros(weights.shape[:-1], dtype=torch.float64)
    largest = weights.amax(-1).double() * n
    if query_mask is not None:
        keep = query_mask[:, None, :].expand_as(largest)
        ratio, largest = ratio[keep], largest[keep]
    return {"entropy_ratio": ratio.flatten().numpy(), "max_times_n": largest.flatten().numpy()}


def foreground_tokens(foreground: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """(B, *spatial) booleans -> (B, N): a token is foreground if its pooling window (adaptive, as DCA pools) holds
    any foreground voxel."""
    pool = F.adaptive_max_pool2d if len(grid) == 2 else F.adaptive_max_pool3d
    return pool(foreground[:, None].float(), tuple(grid)).flatten(1) > 0


def attention_rows(stages: Sequence[StageRecord], foreground: torch.Tensor | None = None,
                   grid: Sequence[int] | None = None) -> list[list[dict[str, Any]]]:
    """Per stage, per block: {"channel": channel_rows, "spatial": spatial_rows over every token, "spatial_foreground":
    over the foreground's tokens}, each None where that attention is off (and "spatial_foreground" where no mask is
    given or it holds no token). foreground (B, *spatial) booleans of the network's input, grid the token grid."""
    mask = foreground_tokens(foreground, grid) if foreground is not None else None
    if mask is not None and not mask.any():
        mask = None
    per_stage = []
    for stage in stages:
        blocks = max(len(stage.channel_attention), len(stage.spatial_attention))
        per_block = []
        for block in range(blocks):
            channel = stage.channel_attention[block] if stage.channel_attention else None
            spatial = stage.spatial_attention[block] if stage.spatial_attention else None
            per_block.append({
                "channel": channel_rows(channel) if channel is not None else None,
                "channel_shape": tuple(channel.shape[1::2]) if channel is not None else None,  # (h, C_sum/h)
                "spatial": spatial_rows(spatial) if spatial is not None else None,
                "spatial_foreground": spatial_rows(spatial, mask) if spatial is not None and mask is not None
                else None,
                "tokens": spatial.shape[-1] if spatial is not None else None,
            })
        per_stage.append(per_block)
    return per_stage


def summarize(cases: Sequence[list[list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """`attention_rows` of one or more cases -> per stage {"stage", "blocks": [per block summary]}: every row of
    every case counts once. Channel: rows, C_sum, effective channels (median, 10th and 90th percentile, mean),
    collapsed share, mean largest probability. Spatial (all tokens, and foreground tokens where given): rows, N,
    entropy / ln N and largest probability x N (mean, standard deviation over the rows, 10th and 90th percentile),
    mean largest probability."""
    summary = []
    for stage in range(len(cases[0])):
        blocks = []
        for block in range(len(cases[0][stage])):
            entries = [case[stage][block] for case in cases]
            result: dict[str, Any] = {"block": block}
            if entries[0]["channel"] is not None:
                result["channel"] = _channel_summary(_joined(entries, "channel"), *entries[0]["channel_shape"])
            if entries[0]["spatial"] is not None:
                tokens = entries[0]["tokens"]
                result["spatial"] = _spatial_summary(_joined(entries, "spatial"), tokens)
                foreground = [e for e in entries if e["spatial_foreground"] is not None]
                result["spatial_foreground"] = (_spatial_summary(_joined(foreground, "spatial_foreground"), tokens)
                                                if foreground else None)
            blocks.append(result)
        summary.append({"stage": stage, "blocks": blocks})
    return summary


def joined_rows(cases: Sequence[list[list[dict[str, Any]]]]) -> list[list[dict[str, Any]]]:
    """`attention_rows` of one or more cases as one case's: per stage and block the rows of every case
    concatenated (for histograms over all cases); "spatial_foreground" over the cases that have it."""
    joined = []
    for stage in range(len(cases[0])):
        blocks = []
        for block in range(len(cases[0][stage])):
            entries = [case[stage][block] for case in cases]
            foreground = [e for e in entries if e["spatial_foreground"] is not None]
            blocks.append({**entries[0],
                           "channel": _joined(entries, "channel") if entries[0]["channel"] is not None else None,
                           "spatial": _joined(entries, "spatial") if entries[0]["spatial"] is not None else None,
                           "spatial_foreground": _joined(foreground, "spatial_foreground") if foreground else None})
        joined.append(blocks)
    return joined


def target_checks(summary: list[dict[str, Any]]) -> dict[str, bool]:
    """Whether a summary meets TARGETS: per attention, over every stage and block (spatial over all tokens)."""
    channel = [b["channel"] for s in summary for b in s["blocks"] if "channel" in b]
    spatial = [b["spatial"] for s in summary for b in s["blocks"] if "spatial" in b]
    t = TARGETS
    return {
        "channel_not_collapsed": all(c["collapsed_share"] <= t["channel_collapsed_share_at_most"] for c in channel),
        "channel_not_uniform": all(t["channel_effective_at_least"] <= c["effective"]["median"]
                                   <= t["channel_effective_at_most_fraction"] * c["row_length"]
                                   for c in channel),
        "spatial_not_uniform": all(s["entropy_ratio"]["mean"] <= t["spatial_entropy_ratio_at_most"]
                                   or s["max_times_n"]["mean"] >= t["spatial_max_times_n_at_least"] for s in spatial),
        "spatial_not_one_hot": all(s["max_probability_mean"] <= t["spatial_max_at_most"] for s in spatial),
    }


def _joined(entries: list[dict[str, Any]], kind: str) -> dict[str, np.ndarray]:
    return {key: np.concatenate([e[kind][key] for e in entries]) for key in entries[0][kind]}


def _spread(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()), "std": float(values.std()), "median": float(np.median(values)),
            "p10": float(np.percentile(values, 10)), "p90": float(np.percentile(values, 90))}


def _channel_summary(rows: dict[str, np.ndarray], heads: int, row_length: int) -> dict[str, Any]:
    return {"rows": int(rows["effective"].size), "context_channels": int(heads * row_length),
            "row_length": int(row_length),
            "effective": _spread(rows["effective"]),
            "collapsed_share": float((rows["max"] > COLLAPSED).mean()),
            "max_probability_mean": float(rows["max"].mean())}


def _spatial_summary(rows: dict[str, np.ndarray], tokens: int) -> dict[str, Any]:
    return {"rows": int(rows["entropy_ratio"].size), "tokens": int(tokens),
            "entropy_ratio": _spread(rows["entropy_ratio"]), "max_times_n": _spread(rows["max_times_n"]),
            "max_probability_mean": float(rows["max_times_n"].mean() / tokens)}
