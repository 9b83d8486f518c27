"""Dual Cross-Attention (Ates, Mohan, Celik 2023) skip connections for nnU-Net v2."""

__all__ = ["DCA"]


def __getattr__(name: str):
    # imported on first use, so that `nnunet-dca trainer-dir` and `--help` answer without loading torch
    if name == "DCA":
        from nnunet_dca.dca import DCA

        return DCA
    raise AttributeError(f"module 'nnunet_dca' has no attribute {name!r}")
