"""`nnunet-dca doctor`: checks of the nnU-Net set-up this package needs, each passed or failed with what to fix.

nnunetv2's version (nnUNet_extTrainer exists from 2.8 on), nnUNet_raw, nnUNet_preprocessed and nnUNet_results,
nnUNet_extTrainer holding this package's trainer folder, and nnU-Net's own finder loading nnUNetTrainerDCA from it.
Then the memory allocator, a hint rather than a check: on the CPU, glibc malloc can cost nnU-Net half its speed.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
from typing import Callable

from nnunet_dca.allocator import SYSTEM_ALLOCATOR, current_allocator, install_hint, preload_line
from nnunet_dca.trainers import same_folder, trainer_dir

MIN_NNUNET = (2, 8)  # nnUNet_extTrainer, the external trainer search path, exists from 2.8 on
NNUNET_PATHS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
EXPORT_LINE = 'export nnUNet_extTrainer="$(nnunet-dca trainer-dir --export)"'
OK, FAIL, HINT = "OK", "FAIL", "HINT"  # a check's status; only FAIL sets doctor's exit code


# each check returns (status, what was found or what to fix)

def _check_nnunet_version() -> tuple[str, str]:
    try:
        version = importlib.metadata.version("nnunetv2")
    except importlib.metadata.PackageNotFoundError:
        return FAIL, "nnunetv2 is not installed: pip install 'nnunetv2>=2.8'"
    required = ".".join(map(str, MIN_NNUNET))
    if tuple(int(part) for part in re.findall(r"\d+", version)[:2]) < MIN_NNUNET:
        return FAIL, (f"nnunetv2 {version} is older than {required} (no nnUNet_extTrainer): "
                      f"pip install -U 'nnunetv2>={required}'")
    return OK, f"nnunetv2 {version} (>= {required})"


def _check_nnunet_path(variable: str) -> tuple[str, str]:
    value = os.environ.get(variable)
    if not value:
        return FAIL, (f"{variable} is not set: export {variable}=/path/to/{variable} "
                      f"(nnU-Net's documentation/setting_up_paths.md)")
    if not os.path.isdir(value):
        return FAIL, f"{variable}={value} is not a folder: create it (mkdir -p {value}) or point {variable} at yours"
    return OK, f"{variable}={value}"


def _check_ext_trainer() -> tuple[str, str]:
    value = os.environ.get("nnUNet_extTrainer")
    if not value:
        return FAIL, f"nnUNet_extTrainer is not set: {EXPORT_LINE}"
    if not any(same_folder(f, trainer_dir()) for f in value.split(os.pathsep) if f):
        return FAIL, f"nnUNet_extTrainer={value} lacks {trainer_dir()}: {EXPORT_LINE}"
    return OK, f"nnUNet_extTrainer holds {trainer_dir()}"


def _check_trainer_found() -> tuple[str, str]:
    try:
        # imported here: nnU-Net takes seconds to import, and only this check needs it; a broken install is what
        # doctor reports, not a traceback
        from nnunet_dca.warm_start import find_trainer_class
        trainer = find_trainer_class("nnUNetTrainerDCA")
    except ImportError as e:
        return FAIL, f"nnU-Net does not import ({e}): pip install 'nnunetv2>=2.8' into this environment"
    except RuntimeError as e:
        return FAIL, str(e)
    found = os.path.dirname(_defining_file(trainer) or "an unknown file")
    if not same_folder(found, trainer_dir()):
        return FAIL, (f"nnU-Net finds nnUNetTrainerDCA in {found}, not in this package's {trainer_dir()}: "
                      f"remove that copy (nnU-Net searches its own trainers first, then nnUNet_extTrainer in order)")
    return OK, f"nnU-Net's finder loads nnUNetTrainerDCA from {found}"


def _check_allocator() -> tuple[str, str]:
    allocator = current_allocator()
    try:
        # imported here, as nnU-Net in _check_trainer_found: a broken PyTorch is what doctor reports, not a traceback
        import torch
        on_gpu = torch.cuda.is_available()
    except (ImportError, OSError) as e:
        return HINT, (f"memory allocator: {allocator}; PyTorch does not import ({e}), so whether nnU-Net runs on the "
                      f"CPU or a GPU is unknown")
    if on_gpu:
        return OK, f"memory allocator: {allocator} (on the GPU, PyTorch's caching allocator is what counts)"
    if allocator != SYSTEM_ALLOCATOR:
        return OK, f"memory allocator: {allocator} for nnU-Net on the CPU (no CUDA GPU)"
    fix = (preload_line("tcmalloc")
           or f"{install_hint('tcmalloc')}, then export LD_PRELOAD=/path/to/libtcmalloc_minimal.so.4")
    return HINT, (f"memory allocator: {allocator}; nnU-Net runs on the CPU (no CUDA GPU), with up to about 2x faster "
                  f"training steps under tcmalloc (docs/cpu.md): {fix}")


def _defining_file(cls: type) -> str | None:
    # nnU-Net's finder unloads the modules it imported from nnUNet_extTrainer, so inspect.getfile(cls), which
    # looks the module up, fails; the code of a method the class defines still names its file
    for value in vars(cls).values():
        code = getattr(getattr(value, "__func__", value), "__code__", None)
        if code is not None:
            return code.co_filename
    return None


def run_doctor() -> int:
    """Runs every check, prints one line per check (OK, FAIL or HINT, and what was found or what to fix), and returns
    the exit code of `nnunet-dca doctor`: 0 if no check failed, else 1 (a HINT never fails)."""
    checks: list[Callable[[], tuple[str, str]]] = [
        _check_nnunet_version,
        *(functools.partial(_check_nnunet_path, variable) for variable in NNUNET_PATHS),
        _check_ext_trainer,
        _check_trainer_found,
        _check_allocator,
    ]
    results = [check() for check in checks]
    for status, message in results:
        print(f"{status:<4} {message}")
    return 1 if any(status == FAIL for status, _ in results) else 0
