"""nnU-Net's folders as exported at the call, and a dataset's name in them.

nnunetv2.paths reads nnUNet_raw, nnUNet_preprocessed and nnUNet_results once, on import; the commands here read them
when they run, so tests and callers may set them after nnunetv2 is imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping


class FolderError(ValueError):
    """An nnU-Net folder or dataset that is not there; the message is one line that names the problem and the fix."""


def folder_from_environment(variable: str) -> Path:
    """The folder an nnU-Net variable (nnUNet_results, ...) names now."""
    value = os.environ.get(variable)
    if not value:
        raise FolderError(f"{variable} is not set: export it as for nnUNetv2_train (nnU-Net's "
                          f"documentation/setting_up_paths.md)")
    return Path(value)


def find_dataset_name(dataset: str | int, folders: Mapping[str, Path], where_to_get_it: str = "a dataset that is "
                      "there") -> str:
    """nnU-Net's name of a dataset given by id or name, found as nnU-Net's maybe_convert_to_dataset_name finds it
    (a DatasetXXX_ folder), in `folders` (variable name -> folder) rather than in the folders nnunetv2 imported.
    An unknown dataset's message says: give `where_to_get_it`, or export the folders it is in."""
    given = str(dataset)
    if given.startswith("Dataset"):
        pattern = given
    else:
        try:
            pattern = f"Dataset{int(given):03d}_*"
        except ValueError:
            raise FolderError(f"{given!r} is no dataset: give its id (e.g. 4) or its name "
                              f"(e.g. Dataset004_Hippocampus)") from None
    found = sorted({path.name for folder in folders.values() for path in Path(folder).glob(pattern) if path.is_dir()})
    if not found:
        where = " nor in ".join(f"{variable}={folder}" for variable, folder in folders.items())
        raise FolderError(f"unknown dataset {given}: it is {'neither' if len(folders) > 1 else 'not'} in {where}; "
                          f"give {where_to_get_it}, or export the folders it is in")
    if len(found) > 1:
        raise FolderError(f"dataset id {given} names {' and '.join(found)}: give the full name, or rename one "
                          f"(nnU-Net needs dataset ids to be unique)")
    return found[0]
