"""`nnunet-dca doctor`: checks of the nnU-Net set-up this package needs, each passed or failed with what to fix.

nnunetv2's version (nnUNet_extTrainer exists from 2.8 on), nnUNet_raw, nnUNet_preprocessed and nnUNet_results,
nnUNet_extTrainer holding this package's trainer folder, and nnU-Net's own finder loading nnUNetTrainerDCA from it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
from typing import Callable

from nnunet_dca.trainers import same_folder, trainer_dir

MIN_NNUNET = (2, 8)  # nnUNet_extTrainer, the external trainer search path, exists from 2.8 on
NNUNET_PATHS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
EXPORT_LINE = 'export nnUNet_extTrainer="$(nnunet-dca trainer-dir --export)"'


# each check returns (passed, what was found or what to fix)

def _check_nnunet_version() -> tuple[bool, str]:
    try:
        version = importlib.metadata.version("nnunetv2")
    except importlib.metadata.PackageNotFoundError:
        return False, "nnunetv2 is not installed: pip install 'nnunetv2>=2.8'"
    required = ".".join(map(str, MIN_NNUNET))
    if tuple(int(part) for part in re.findall(r"\d+", version)[:2]) < MIN_NNUNET:
        return False, (f"nnunetv2 {version} is older than {required} (no nnUNet_extTrainer): "
                       f"pip install -U 'nnunetv2>={required}'")
    return True, f"nnunetv2 {version} (>= {required})"


def _check_nnunet_path(variable: str) -> tuple[bool, str]:
    value = os.environ.get(variable)
    if not value:
        return False, (f"{variable} is not set: export {variable}=/path/to/{variable} "
                       f"(nnU-Net's documentation/setting_up_paths.md)")
    if not os.path.isdir(value):
        return False, f"{variable}={value} is not a folder: create it (mkdir -p {value}) or point {variable} at yours"
    return True, f"{variable}={value}"


def _check_ext_trainer() -> tuple[bool, str]:
    value = os.environ.get("nnUNet_extTrainer")
    if not value:
        return False, f"nnUNet_extTrainer is not set: {EXPORT_LINE}"
    if not any(same_folder(f, trainer_dir()) for f in value.split(os.pathsep) if f):
        return False, f"nnUNet_extTrainer={value} lacks {trainer_dir()}: {EXPORT_LINE}"
    return True, f"nnUNet_extTrainer holds {trainer_dir()}"


def _check_trainer_found() -> tuple[bool, str]:
    try:
        # imported here: nnU-Net takes seconds to import, and only this check needs it; a broken install is what
        # doctor reports, not a traceback
        from nnunet_dca.warm_start import find_trainer_class
        trainer = find_trainer_class("nnUNetTrainerDCA")
    except ImportError as e:
        return False, f"nnU-Net does not import ({e}): pip install 'nnunetv2>=2.8' into this environment"
    except RuntimeError as e:
        return False, str(e)
    found = os.path.dirname(_defining_file(trainer) or "an unknown file")
    if not same_folder(found, trainer_dir()):
        return False, (f"nnU-Net finds nnUNetTrainerDCA in {found}, not in this package's {trainer_dir()}: "
                       f"remove that copy (nnU-Net searches its own trainers first, then nnUNet_extTrainer in order)")
    return True, f"nnU-Net's finder loads nnUNetTrainerDCA from {found}"


def _defining_file(cls: type) -> str | None:
    # nnU-Net's finder unloads the modules it imported from nnUNet_extTrainer, so inspect.getfile(cls), which
    # looks the module up, fails; the code of a method the class defines still names its file
    for value in vars(cls).values():
        code = getattr(getattr(value, "__func__", value), "__code__", None)
        if code is not None:
            return code.co_filename
    return None


def run_doctor() -> int:
    """Runs every check, prints one line per check (OK or FAIL, and what was found or what to fix), and returns the
    exit code of `nnunet-dca doctor`: 0 if all passed, else 1."""
    checks: list[Callable[[], tuple[bool, str]]] = [
        _check_nnunet_version,
        *(functools.partial(_check_nnunet_path, variable) for variable in NNUNET_PATHS),
        _check_ext_trainer,
        _check_trainer_found,
    ]
    results = [check() for check in checks]
    for passed, message in results:
        print(f"{'OK  ' if passed else 'FAIL'} {message}")
    return 0 if all(passed for passed, _ in results) else 1
