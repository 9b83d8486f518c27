"""Dual Cross-Attention (Ates, Mohan, Celik 2023) skip connections for nnU-Net v2."""

from nnunet_dca.dca import DCA

__all__ = ["DCA"]
