"""What `nnunet-dca --version` prints: this package's version and those of what it runs on, for a bug report."""

from __future__ import annotations

import importlib.metadata
import platform

from nnunet_dca import __version__

# what decides how a model trains and predicts, besides this package
RUNS_ON = ("nnunetv2", "dynamic-network-architectures", "torch")


def installed_version(distribution: str) -> str:
    """The installed version of a distribution (a pip name), or "not installed"."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def version_report() -> str:
    """Two lines: `nnunet-dca X`, then nnunetv2's, dynamic-network-architectures', torch's and Python's versions.

    Read from the installed metadata, so that it answers without importing torch."""
    runs_on = ", ".join(f"{name} {installed_version(name)}" for name in RUNS_ON)
    return f"nnunet-dca {__version__}\n{runs_on}, Python {platform.python_version()}"
