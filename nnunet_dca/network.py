"""The DCA U-Net: the U-Net nnU-Net builds from the plans, with DCA between its encoder and its decoder.

Two ways to get one, one wrapping logic (`DCAUNet`):
- a trainer wraps the stock network nnU-Net built and initialized: `DCAUNet(network, dca_block)`;
- a plans configuration names `DCAUNetFromPlans` in its `architecture` block, and nnU-Net's
  get_network_from_plans builds it from `arch_kwargs` (the base class name, the base kwargs, a `dca` block).
"""

from __future__ import annotations

import pydoc
from typing import Any, Mapping

import torch
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from torch import nn

from nnunet_dca.config import parse_dca_block, saved_dca_block
from nnunet_dca.dca import DCA

SUPPORTED_NETWORKS = ("nnU-Net's PlainConvUNet and ResidualEncoderUNet (dynamic_network_architectures, "
                      "the default and ResEnc M/L/XL plans), with 2D or 3D convolutions")


class DCAUNet(nn.Module):
    """A built U-Net whose first encoder skips pass through Dual Cross-Attention (Ates, Mohan, Celik 2023).

    forward: skips = encoder(x); skips[:k] = dca(skips[:k]); return decoder(skips), with
    k = min(dca block's `stages`, number of skips - 1): the deepest skip, the bottleneck, passes unchanged.

    Input: x (B, C_in, *patch_size). Output: what the base network returns, logits (B, num_classes, *patch_size),
    or with deep supervision a list of logits from full resolution down. `.encoder` and `.decoder` are the base
    network's own modules, so nnU-Net's deep-supervision switch (`decoder.deep_supervision`), torch.compile,
    DDP and checkpoints work as with the stock network; DCA's parameters live under `dca.`.
    """

    def __init__(self, network: nn.Module, dca: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        _check_supported(network)
        stages, dca_kwargs = parse_dca_block(dca)
        features = list(network.encoder.output_channels)
        if len(features) < 2:
            raise ValueError(f"{type(network).__name__} has {len(features)} encoder stage(s); DCA needs at least 2, "
                             f"because the deepest skip (the bottleneck) is never refined")
        self.stages = min(stages, len(features) - 1)
        self.encoder = network.encoder
        self.decoder = network.decoder
        self.dca = DCA(features=features[:self.stages], spatial_dims=convert_conv_op_to_dim(network.encoder.conv_op),
                       **dca_kwargs)
        # the class, not the instance: holding the base network would register its modules a second time
        self.base_class = type(network)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = self.encoder(x)
        return self.decoder(self.dca(skips[:self.stages]) + skips[self.stages:])

    def compute_conv_feature_map_size(self, input_size: tuple[int, ...]) -> int:
        """The base network's estimate (nnU-Net uses it to plan for GPU memory); DCA's own maps are not counted."""
        base_estimate = getattr(self.base_class, "compute_conv_feature_map_size", None)
        if base_estimate is None:
            raise NotImplementedError(f"{self.base_class.__name__} has no compute_conv_feature_map_size")
        # the stock networks compute it from .encoder and .decoder alone, which this module shares
        return base_estimate(self, input_size)


class DCAUNetFromPlans(DCAUNet):
    """The DCA U-Net of a plans configuration, built by nnU-Net's get_network_from_plans.

    The configuration's `architecture` block names this class as `network_class_name`; its `arch_kwargs` hold
    `base_network_class_name` (the stock U-Net's class path), the stock U-Net's own kwargs and the `dca` block
    `nnunet-dca add-config` wrote, every key filled in (nnunet_dca.config; a block written before the `merge` key
    existed means the paper's merge, as those models were trained). Shapes in and out as `DCAUNet`.
    """

    def __init__(self, input_channels: int, num_classes: int, base_network_class_name: str,
                 dca: Mapping[str, Any] | None = None, **base_kwargs: Any) -> None:
        base_class = pydoc.locate(base_network_class_name)
        if not isinstance(base_class, type):
            raise ValueError(f"base_network_class_name {base_network_class_name!r} in the plans' arch_kwargs is not "
                             f"an importable class; use the stock one, e.g. "
                             f"'dynamic_network_architectures.architectures.unet.PlainConvUNet'")
        super().__init__(base_class(input_channels=input_channels, num_classes=num_classes, **base_kwargs),
                         saved_dca_block(dca))

    def initialize(self, module: nn.Module) -> None:
        """get_network_from_plans calls network.apply(network.initialize) on every submodule.

        The base network's modules get the base class's own init (He init for the stock U-Nets, ResEnc's zeroed
        last norm per block) in the stock order. DCA's modules keep the init they were built with, so DCA starts
        the same as in a trainer-built DCA U-Net, where the stock net is initialized before DCA is added.
        """
        base_initialize = getattr(self.base_class, "initialize", None)
        if base_initialize is not None and not any(module is m for m in self.dca.modules()):
            base_initialize(module)


def _check_supported(network: nn.Module) -> None:
    if isinstance(network, DCAUNet):
        raise TypeError(f"{type(network).__name__} already has DCA skip connections; build DCA on the stock U-Net "
                        f"(a configuration naming DCAUNetFromPlans trains with the stock nnUNetTrainer)")
    encoder = getattr(network, "encoder", None)
    if not (hasattr(network, "decoder") and getattr(encoder, "return_skips", False)
            and hasattr(encoder, "output_channels") and hasattr(encoder, "conv_op")):
        raise TypeError(f"{type(network).__name__} does not expose U-Net skip connections (an .encoder returning its "
                        f"skips, with .output_channels and .conv_op, and a .decoder taking them). "
                        f"DCA supports {SUPPORTED_NETWORKS}.")
