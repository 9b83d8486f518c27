"""The memory allocator a process runs on, and how to put nnU-Net on a caching one (tcmalloc or jemalloc) on CPU.

glibc's malloc hands large blocks back to the system when they are freed, so every large tensor of every training
step faults its pages in again; tcmalloc and jemalloc keep them, as PyTorch's CUDA allocator keeps GPU memory. On
CPU that decides a large share of a U-Net's step time (docs/cpu.md). Linux only: the library is loaded by
`LD_PRELOAD` before Python starts.
"""

from __future__ import annotations

import os
import sys

# the allocators that are found by their library's name among the libraries this process has mapped
KNOWN_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")
# the caching allocators this project can preload: the library files to look for, Debian's and conda-forge's package
PRELOADABLE = {
    "tcmalloc": (("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"), "libtcmalloc-minimal4", "gperftools"),
    "jemalloc": (("libjemalloc.so.2",), "libjemalloc2", "jemalloc"),
}
SYSTEM_ALLOCATOR = "glibc malloc"
_LIBRARY_FOLDERS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                    "/usr/local/lib", "/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu")
# set by `run_under`, so that a preload that did not take cannot re-execute forever
_REEXEC_MARK = "NNUNET_DCA_ALLOCATOR_REEXEC"


def current_allocator() -> str:
    """The allocator of this process: "tcmalloc", "jemalloc" or "mimalloc" where its library is mapped into the
    process (read from /proc/self/maps, not assumed from LD_PRELOAD), else "glibc malloc" (or the platform's own
    allocator where there is no /proc)."""
    try:
        with open("/proc/self/maps") as f:
            mapped = {os.path.basename(line.split()[-1]) for line in f if "/" in line}
    except OSError:
        return f"{sys.platform}'s malloc"
    for name in KNOWN_ALLOCATORS:
        if any(library.startswith(f"lib{name}") for library in mapped):
            return name
    return SYSTEM_ALLOCATOR


def find_library(allocator: str) -> str | None:
    """The path of `allocator`'s shared library ("tcmalloc" or "jemalloc") on this machine, or None.

    Looked for in the system's library folders and in this Python environment's own lib folder (where conda puts
    it)."""
    names, _, _ = PRELOADABLE[allocator]
    folders = (*_LIBRARY_FOLDERS, os.path.join(sys.prefix, "lib"))
    for name in names:
        for folder in folders:
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    return None


def install_hint(allocator: str) -> str:
    """What to install where `allocator`'s library is missing."""
    _, debian, conda = PRELOADABLE[allocator]
    return f"apt-get install {debian} (Debian, Ubuntu) or conda install -c conda-forge {conda}"


def preload_line(allocator: str) -> str | None:
    """The shell line that puts every later command of the shell on `allocator`, or None where it is missing."""
    library = find_library(allocator)
    return None if library is None else f"export LD_PRELOAD={library}"


def run_under(allocator: str) -> None:
    """Re-executes this Python program (same interpreter, options and arguments, `-c` and `-m` included) with
    `allocator` preloaded; returns at once where it already runs on it. Exits with a one-line message where the
    library is missing or did not load."""
    if current_allocator() == allocator:
        return
    if os.environ.get(_REEXEC_MARK):
        raise SystemExit(f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '')} did not load {allocator} into this "
                         f"process (it runs on {current_allocator()}); check the library with ldd")
    library = find_library(allocator)
    if library is None:
        raise SystemExit(f"{allocator} is not installed on this machine: {install_hint(allocator)}")
    preloaded = os.environ.get("LD_PRELOAD", "")
    environment = {**os.environ, _REEXEC_MARK: "1",
                   "LD_PRELOAD": f"{library} {preloaded}".strip()}
    sys.stdout.flush()
    # sys.orig_argv, not sys.argv: sys.argv has lost the interpreter's options, `-c`'s code and `-m`'s module name
    os.execve(sys.executable, sys.orig_argv, environment)
