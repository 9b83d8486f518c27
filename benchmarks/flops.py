"""The FLOP floor: what DCA adds to a step in floating-point operations, the ratio its time could reach.

Counted with torch.utils.flop_counter.FlopCounterMode (matrix products and convolutions) on DCA's explicit attention
path, which multiplies queries, keys and values at their own head dims: the counter returns 0 for the CPU flash
kernel, and the fused kernels' zero-padded values are not work DCA needs. FLOPs are linear in the batch, so one
sample is counted.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from cases import Case


@contextlib.contextmanager
def explicit_attention(module: torch.nn.Module):
    """Every DCA in `module` on its explicit attention path for the duration (the same outputs as the fused one)."""
    dcas = [m for m in module.modules() if hasattr(m, "fused_attention")]
    saved = [m.fused_attention for m in dcas]
    for m in dcas:
        m.fused_attention = False
    try:
        yield
    finally:
        for m, fused in zip(dcas, saved):
            m.fused_attention = fused


def count_flops(module: torch.nn.Module, call: Callable[[], torch.Tensor | list[torch.Tensor]], backward: bool) -> int:
    """FLOPs of `call()` (a forward of `module`), and of its backward from the sum of its outputs if `backward`."""
    with explicit_attention(module), FlopCounterMode(display=False) as counter:
        if backward:
            outputs = call()
            sum(o.float().sum() for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])).backward()
            module.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                call()
    return counter.get_total_flops()


def flop_floor(case: Case, training: bool) -> float:
    """DCA's FLOPs / stock's for one sample at the case's patch: a training step (deep supervision, forward and
    backward) if `training`, else the forward pass that sliding-window inference runs on each tile."""
    configuration = case.configuration_manager
    x = torch.randn(1, case.input_channels, *configuration.patch_size, generator=torch.Generator().manual_seed(0))
    flops = {}
    for network in ("stock", "dca"):
        model = case.build(network, deep_supervision=training).train(training)
        flops[network] = count_flops(model, functools.partial(model, x), backward=training)
    return flops["dca"] / flops["stock"]
