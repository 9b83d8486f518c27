"""Dual Cross-Attention (Ates, Mohan, Celik 2023) skip connections for nnU-Net v2."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["DCA", "__version__"]

try:
    __version__ = version("nnunet-dca")  # pyproject.toml's, as installed
except PackageNotFoundError:  # a source tree put on sys.path without installing it
    __version__ = "0+unknown"


def __getattr__(name: str):
    # imported on first use, so that `nnunet-dca trainer-dir` and `--help` answer without loading torch
    if name == "DCA":
        from nnunet_dca.dca import DCA

        return DCA
    raise AttributeError(f"module 'nnunet_dca' has no attribute {name!r}")
