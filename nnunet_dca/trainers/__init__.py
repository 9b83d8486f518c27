"""nnU-Net trainers with DCA skip connections. This folder is the one to put on `nnUNet_extTrainer`.

nnU-Net imports each module here by its file name, so the trainer modules import only absolute names.
"""

import os


def trainer_dir() -> str:
    """The absolute folder for `nnUNet_extTrainer` (this package's folder, in an editable or a wheel install)."""
    return os.path.dirname(os.path.abspath(__file__))
