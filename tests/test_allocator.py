"""nnunet_dca.allocator: which allocator a process runs on, read from its mapped libraries, and re-executing a program
under tcmalloc. Children run without the LD_PRELOAD this test process may have (CI runs pytest under tcmalloc)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nnunet_dca.allocator
from nnunet_dca.allocator import (
    KNOWN_ALLOCATORS,
    PRELOADABLE,
    SYSTEM_ALLOCATOR,
    current_allocator,
    find_library,
    install_hint,
    run_under,
)

REPORT = "from nnunet_dca.allocator import current_allocator; print(current_allocator())"


def without_preload() -> dict[str, str]:
    """This process's environment without LD_PRELOAD and without run_under's mark of a re-executed program."""
    return {name: value for name, value in os.environ.items()
            if name not in ("LD_PRELOAD", nnunet_dca.allocator._REEXEC_MARK)}


def library_of(allocator: str) -> str:
    """`allocator`'s library on this machine; skips the test where it is not installed."""
    library = find_library(allocator)
    if library is None:
        pytest.skip(f"{allocator} is not installed on this machine: {install_hint(allocator)}")
    return library


def python(*arguments: str, env: dict[str, str]) -> str:
    """The standard output of this environment's Python run with `arguments`; fails the test where it exits non-zero."""
    result = subprocess.run([sys.executable, *arguments], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_this_process_runs_on_the_allocator_its_ld_preload_names():
    preloaded = os.environ.get("LD_PRELOAD", "")
    expected = next((name for name in KNOWN_ALLOCATORS if name in preloaded), SYSTEM_ALLOCATOR)
    assert current_allocator() == expected


def test_a_process_without_ld_preload_runs_on_glibc_malloc():
    assert python("-c", REPORT, env=without_preload()) == f"{SYSTEM_ALLOCATOR}\n"


@pytest.mark.parametrize("allocator", PRELOADABLE)
def test_a_process_runs_on_the_allocator_preloaded_into_it(allocator):
    env = {**without_preload(), "LD_PRELOAD": library_of(allocator)}
    assert python("-c", REPORT, env=env) == f"{allocator}\n"


PROGRAM = textwrap.dedent("""
    import sys
    from nnunet_dca.allocator import current_allocator, run_under
    run_under("tcmalloc")
    print(current_allocator(), *sys.argv[1:])
""")


@pytest.mark.parametrize("as_script", [True, False], ids=["script", "python -c"])
def test_run_under_re_executes_the_program_with_its_arguments_on_tcmalloc(tmp_path: Path, as_script):
    library_of("tcmalloc")
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    program = [str(script)] if as_script else ["-c", PROGRAM]
    assert python(*program, "one", "two words", env=without_preload()) == "tcmalloc one two words\n"


def test_run_under_a_missing_library_exits_with_the_install_command(monkeypatch):
    monkeypatch.setattr(nnunet_dca.allocator, "current_allocator", lambda: SYSTEM_ALLOCATOR)
    monkeypatch.setattr(nnunet_dca.allocator, "find_library", lambda allocator: None)
    monkeypatch.delenv(nnunet_dca.allocator._REEXEC_MARK, raising=False)
    with pytest.raises(SystemExit, match="apt-get install libtcmalloc-minimal4"):
        run_under("tcmalloc")


def test_run_under_does_not_re_execute_again_where_the_preload_did_not_take(monkeypatch):
    monkeypatch.setattr(nnunet_dca.allocator, "current_allocator", lambda: SYSTEM_ALLOCATOR)
    monkeypatch.setenv(nnunet_dca.allocator._REEXEC_MARK, "1")
    with pytest.raises(SystemExit, match="did not load tcmalloc into this process"):
        run_under("tcmalloc")
