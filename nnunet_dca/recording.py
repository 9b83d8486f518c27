"""What DCA computes in a forward pass, recorded without changing it: per stage, the attention weights of every
block, the skip DCA received, the branch it adds and the refined skip the decoder gets.

    with DCARecorder(network.dca) as recorder:
        network(x)
    recorder.stages[0].spatial_attention[0]   # stage 0, block 0: (B, h, N, N)

Forward hooks only read the modules' inputs and outputs. Where the forward pass runs a fused kernel that gives no
weights, they are computed again from the same queries and keys by the explicit path (`attention_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from nnunet_dca.dca import DCA, upsample_linear


@dataclass
class StageRecord:
    """One stage's record of the last forward pass of Dual Cross-Attention (Ates, Mohan, Celik 2023), detached.
    Shapes: skip, branch, refined (B, C_i, *spatial_i); channel_attention per block (B, h, C_i/h, C_sum/h);
    spatial_attention per block (B, h, N, N)."""

    skip: torch.Tensor | None = None
    branch: torch.Tensor | None = None  # the refined tokens' 1x1 conv, upsampled to the skip's size
    refined: torch.Tensor | None = None
    channel_attention: list[torch.Tensor] = field(default_factory=list)
    spatial_attention: list[torch.Tensor] = field(default_factory=list)


class DCARecorder:
    """Records every forward pass of a `DCA` module (Ates, Mohan, Celik 2023) while the context is open; `stages`
    holds the last one, a `StageRecord` per skip. The module's inputs and outputs (a list of skips
    (B, C_i, *spatial_i) in, the same shapes out) are left as they are.

    Each stage's attention matrices (float32) are kept for every block; at N tokens the spatial ones take
    B x heads x N^2 x 4 bytes per stage and block.
    """

    def __init__(self, dca: DCA) -> None:
        if not isinstance(dca, DCA):
            raise TypeError(f"DCARecorder records a DCA module (a DCA U-Net's .dca), got {type(dca).__name__}")
        self.dca = dca
        self.stages: list[StageRecord] = []
        self._conv_outputs: dict[int, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> DCARecorder:
        if self._handles:
            raise RuntimeError("this DCARecorder is already recording; open it once at a time")
        self.stages = [StageRecord() for _ in self.dca.features]
        for block in self.dca.blocks:
            for kind, attentions in (("channel_attention", block.channel_attentions),
                                     ("spatial_attention", block.spatial_attentions)):
                for stage, attention in enumerate(attentions or []):
                    self._handles.append(attention.register_forward_hook(self._attention_hook(stage, kind)))
        for stage, conv in enumerate(self.dca.output_convs):
            self._handles.append(conv.register_forward_hook(self._conv_hook(stage)))
        self._handles.append(self.dca.register_forward_pre_hook(self._start))
        self._handles.append(self.dca.register_forward_hook(self._finish))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _start(self, module: nn.Module, inputs: tuple) -> None:
        self.stages = [StageRecord() for _ in self.dca.features]

    def _attention_hook(self, stage: int, kind: str) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            tokens, context = inputs[:2]
            with torch.no_grad():
                getattr(self.stages[stage], kind).append(module.attention_weights(tokens, context).detach())
        return hook

    def _conv_hook(self, stage: int) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self._conv_outputs[stage] = output.detach()
        return hook

    def _finish(self, module: nn.Module, inputs: tuple, outputs: list[torch.Tensor]) -> None:
        skips = inputs[0]
        with torch.no_grad():
            for stage, (record, skip, refined) in enumerate(zip(self.stages, skips, outputs)):
                record.skip, record.refined = skip.detach(), refined.detach()
                record.branch = upsample_linear(self._conv_outputs.pop(stage), tuple(skip.shape[2:]))
