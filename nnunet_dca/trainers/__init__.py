"""nnU-Net trainers with DCA skip connections. This folder is the one to put on `nnUNet_extTrainer`.

nnU-Net imports each module here by its file name, so the trainer modules import only absolute names.
"""

from __future__ import annotations

import os


def trainer_dir() -> str:
    """The absolute folder for `nnUNet_extTrainer` (this package's folder, in an editable or a wheel install)."""
    return os.path.dirname(os.path.abspath(__file__))


def ext_trainer_value(current: str | None) -> str:
    """nnUNet_extTrainer with the trainer folder first and every folder the user already had kept."""
    folders = [f for f in (current or "").split(os.pathsep) if f and not same_folder(f, trainer_dir())]
    return os.pathsep.join([trainer_dir(), *folders])


def same_folder(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)
