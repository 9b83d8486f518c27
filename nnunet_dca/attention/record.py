"""The network run once on the query's tile with DCA's recorder on, and the numbers behind the pictures."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nnunet_dca.attention.model import Model
from nnunet_dca.attention.tile import Tile
from nnunet_dca.recording import DCARecorder, StageRecord


@dataclass
class TileRecord:
    """What DCA computed on the tile (batch of one, float32 on the CPU): per stage the skip, the refined skip and per
    block the attention weights; the token grid and the query's token on it; the network's output, logits
    (1, classes, *patch)."""

    stages: list[StageRecord]
    grid: tuple[int, ...]
    query_token: tuple[int, ...]
    logits: torch.Tensor

    @property
    def query_index(self) -> int:
        """The query token's row in the spatial attention matrices (tokens in row-major order)."""
        return int(np.ravel_multi_index(self.query_token, self.grid))


def record_tile(model: Model, tile: Tile, tile_input: torch.Tensor) -> TileRecord:
    """Runs the network on `tile_input` (1, C, *patch) as nnU-Net's prediction runs it (eval, float16 autocast on
    CUDA), once, recording DCA."""
    device = model.predictor.device
    autocast = torch.autocast(device.type) if device.type == "cuda" else contextlib.nullcontext()
    with torch.no_grad(), autocast, DCARecorder(model.dca) as recorder:
        logits = model.network(tile_input.to(device))
    stages = cpu_stages(recorder.stages)
    grid = model.dca.grid_for([stage.skip for stage in stages])
    return TileRecord(stages, grid, tile.token(grid), _cpu(logits))


def query_attention(record: TileRecord, weights: torch.Tensor) -> torch.Tensor:
    """The query token's row of a block's spatial attention (1, h, N, N), on the token grid: (h, *grid)."""
    return weights[0, :, record.query_index].reshape(-1, *record.grid)


def channel_matrix(weights: torch.Tensor) -> torch.Tensor:
    """A stage's channel attention (h, C_i/h, C_sum/h) as one C_i x C_sum matrix: each head's block on the diagonal,
    where its channels attend; zero where a head does not reach."""
    return torch.block_diag(*weights)


def skip_change(stage: StageRecord) -> torch.Tensor:
    """|refined skip - skip|, mean over channels: (*spatial_i)."""
    return (stage.refined[0] - stage.skip[0]).abs().mean(dim=0)


def summary(record: TileRecord, features: list[int]) -> list[dict[str, Any]]:
    """Per stage: the skip's channels and shape, the rms of the skip change over the rms of the skip; per block,
    per head of spatial attention the query's entropy (nats; uniform attention has log N) and largest probability
    and the token it falls on; per block the channel attention each stage block receives, averaged over the
    stage's channels (sums to one; uniform attention gives C_j / C_sum)."""
    bounds = np.cumsum([0, *features])
    stages = []
    for index, stage in enumerate(record.stages):
        change = stage.refined[0] - stage.skip[0]
        blocks = []
        for block, (channel, spatial) in enumerate(_pairs(stage)):
            entry: dict[str, Any] = {"block": block}
            if spatial is not None:
                rows = query_attention(record, spatial).flatten(1)  # (h, N)
                entropy = -(rows * rows.clamp_min(1e-30).log()).sum(-1)
                entry["spatial_attention"] = [
                    {"head": head, "entropy": float(entropy[head]), "max_probability": float(rows[head].max()),
                     "max_token": [int(i) for i in np.unravel_index(int(rows[head].argmax()), record.grid)]}
                    for head in range(rows.shape[0])]
                entry["spatial_uniform_entropy"] = math.log(math.prod(record.grid))
            if channel is not None:
                matrix = channel_matrix(channel[0])
                entry["channel_attention_per_stage_block"] = [
                    float(matrix[:, lo:hi].sum(-1).mean()) for lo, hi in zip(bounds[:-1], bounds[1:])]
                entry["channel_uniform_per_stage_block"] = [c / bounds[-1] for c in features]
            blocks.append(entry)
        skip_rms = float(stage.skip[0].square().mean().sqrt())
        stages.append({"stage": index, "channels": features[index], "skip_shape": list(stage.skip.shape[2:]),
                       # null for a skip that is zero throughout (JSON has no NaN)
                       "skip_change_rms": float(change.square().mean().sqrt()) / skip_rms if skip_rms else None,
                       "blocks": blocks})
    return stages


def arrays(record: TileRecord) -> dict[str, np.ndarray]:
    """The maps behind the pictures, for attention.npz: per stage and block the query's spatial attention
    (h, *grid) and the channel matrix (C_i, C_sum); per stage the skip change (*spatial_i)."""
    saved = {}
    for index, stage in enumerate(record.stages):
        saved[f"stage{index}_skip_change"] = skip_change(stage).numpy()
        for block, (channel, spatial) in enumerate(_pairs(stage)):
            if spatial is not None:
                saved[f"stage{index}_block{block}_spatial"] = query_attention(record, spatial).numpy()
            if channel is not None:
                saved[f"stage{index}_block{block}_channel"] = channel_matrix(channel[0]).numpy()
    return saved


def _pairs(stage: StageRecord) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
    """(channel, spatial) attention per block; None where an ablation switched that attention off."""
    blocks = max(len(stage.channel_attention), len(stage.spatial_attention))
    return [(stage.channel_attention[b] if stage.channel_attention else None,
             stage.spatial_attention[b] if stage.spatial_attention else None) for b in range(blocks)]


def cpu_stages(stages: list[StageRecord]) -> list[StageRecord]:
    """A recorder's stages with every tensor detached, float32 and on the CPU."""
    return [StageRecord(**{name: _cpu(value) for name, value in vars(stage).items()}) for stage in stages]


def _cpu(value: Any) -> Any:
    if isinstance(value, list):
        return [_cpu(item) for item in value]
    return value.detach().float().cpu() if isinstance(value, torch.Tensor) else value
