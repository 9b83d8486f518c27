"""The README and the pages under docs/: every relative link resolves, every documented command line parses, and the
README stays a short first page.

Nothing here trains or runs a command: `nnunet-dca` command lines go through the real parser of nnunet_dca.cli, and
the benchmark scripts' command lines through each script's own parser, stopped right after it parsed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from nnunet_dca.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 12_000
FIRST_SCREEN_LINES = 60
SHELL_LANGUAGES = {"bash", "sh", "shell"}


# reading markdown

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})\s*([\w+-]*)")
HEADING = re.compile(r"^(?:\s{0,3}>\s?)*\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")  # also headings quoted with '>'
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"`+[^`]*`+")


@dataclass
class Block:
    """A fenced code block: its language and its lines, each with its line number in the page (1-based)."""
    language: str
    lines: list[tuple[int, str]]


def split_page(text: str) -> tuple[list[tuple[int, str]], list[Block]]:
    """(the lines outside fenced code blocks, the fenced code blocks) of a markdown page."""
    prose: list[tuple[int, str]] = []
    blocks: list[Block] = []
    fence = None
    for number, line in enumerate(text.split("\n"), start=1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                blocks.append(Block(match.group(2).lower(), []))
            else:
                prose.append((number, line))
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) and not match.group(2):
            fence = None
        else:
            blocks[-1].lines.append((number, line))
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text as shown (links and code marks gone), lowercased, punctuation other
    than '-' and '_' removed, spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, a repeated one numbered as GitHub numbers it (-1, -2, ...)."""
    prose, _ = split_page(page.read_text())
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose:
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every link and image in a page's prose that is not a URL."""
    prose, _ = split_page(page.read_text())
    links = []
    for number, line in prose:
        for match in LINK.finditer(CODE_SPAN.sub("", line)):
            target = match.group(1)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:, ...
                links.append((number, target))
    return links


# reading the command lines of the shell blocks

SUBSTITUTION = re.compile(r"\$\(([^()]*)\)")
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", ";;"}
SHELL_WORDS = {"do", "then", "else", "elif", "time", "!", "{"}


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """The block's lines with backslash continuations joined, each numbered by its first line."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in block.lines:
        if pending is not None:
            number, line = pending[0], pending[1] + " " + line.lstrip()
            pending = None
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1])
        else:
            joined.append((number, line))
    if pending is not None:
        joined.append(pending)
    return joined


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line, as words: comments dropped, each command substitution `$(...)` a command
    of its own, the line split at ;, &&, ||, | and &, and shell keywords (`do`, `then`) and leading `VAR=value`
    assignments left out."""
    commands = [command for inner in SUBSTITUTION.findall(line) for command in simple_commands(inner)]
    lexer = shlex.shlex(SUBSTITUTION.sub("SUBSTITUTION", line), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words: list[str] = []
    for token in [*lexer, ";"]:
        if token not in SEPARATORS:
            words.append(token)
            continue
        while words and (words[0] in SHELL_WORDS or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0])):
            words.pop(0)
        if words:
            commands.append(words)
        words = []
    return commands


@dataclass
class DocumentedCommand:
    page: str
    line: int
    words: list[str]

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {shlex.join(self.words)}"


def documented_commands() -> list[DocumentedCommand]:
    """Every simple command in the README's and the docs pages' shell code blocks."""
    found = []
    for page in PAGES:
        _, blocks = split_page(page.read_text())
        for block in blocks:
            if block.language in SHELL_LANGUAGES:
                for number, line in logical_lines(block):
                    for words in simple_commands(line):
                        found.append(DocumentedCommand(str(page.relative_to(ROOT)), number, words))
    return found


COMMANDS = documented_commands()
CLI_COMMANDS = [command for command in COMMANDS if command.words[0] == "nnunet-dca"]
BENCHMARK_COMMANDS = [command for command in COMMANDS
                      if command.words[0] in ("python", "python3") and len(command.words) > 1
                      and command.words[1].startswith("benchmarks/")]


# the links

@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for number, target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{page.relative_to(ROOT)}:{number}: {target} (no file {path})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{page.relative_to(ROOT)}:{number}: {target} (no heading #{anchor} in "
                          f"{file.relative_to(ROOT)}; it has {', '.join(sorted(anchors(file)))})")
    assert not broken, "links to nothing:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / target.partition("#")[0]).resolve() for _, target in relative_links(README)}
    unlinked = [str(page.relative_to(ROOT)) for page in PAGES[1:] if page.resolve() not in linked]
    assert not unlinked, f"pages under docs/ the README's contents do not link: {unlinked}"


def test_slug_follows_github():
    assert slug("How DCA starts: the residual merge and the paper's") == \
        "how-dca-starts-the-residual-merge-and-the-papers"
    assert slug("Does DCA help on my data? `nnunet-dca compare`") == "does-dca-help-on-my-data-nnunet-dca-compare"
    assert slug("The `dca` block") == "the-dca-block"
    assert slug("On the GPU: float16 and several GPUs") == "on-the-gpu-float16-and-several-gpus"


# the commands

def test_the_commands_are_found():
    documented = {command.words[1] for command in CLI_COMMANDS if len(command.words) > 1}
    assert {"demo", "doctor", "trainer-dir", "add-config", "warm-start", "compare"} <= documented, documented
    assert BENCHMARK_COMMANDS, "no `python benchmarks/...` command found in the docs' shell blocks"


def test_command_lines_split_as_the_shell_splits_them():
    assert simple_commands('export A=1 B="$(nnunet-dca trainer-dir --export)"  # a comment') == [
        ["nnunet-dca", "trainer-dir", "--export"], ["export", "A=1", "B=SUBSTITUTION"]]
    assert simple_commands("for f in 0 1; do nnunet-dca compare 4 --folds $f; done") == [
        ["for", "f", "in", "0", "1"], ["nnunet-dca", "compare", "4", "--folds", "$f"], ["done"]]
    block = Block("bash", [(1, "nnunet-dca compare 4 \\"), (2, "    --train local   # trains")])
    [(number, line)] = logical_lines(block)
    assert number == 1 and simple_commands(line) == [["nnunet-dca", "compare", "4", "--train", "local"]]


@pytest.mark.parametrize("command", CLI_COMMANDS, ids=str)
def test_nnunet_dca_command_parses(command):
    """The command as documented, parsed by the real `nnunet-dca` parser (nothing runs)."""
    stderr, code = io.StringIO(), None
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(command.words[1:])
    except SystemExit as e:
        code = e.code
    assert code in (0, None), f"no longer parses: {command}\n{stderr.getvalue().strip()}"


# runs each benchmark script in one process, with argparse stopped right after its parser parsed the command line
PARSE_ONLY = """
import argparse, contextlib, io, json, runpy, sys

class Parsed(Exception):
    pass

parse_args = argparse.ArgumentParser.parse_args

def parse_and_stop(self, args=None, namespace=None):
    parse_args(self, args, namespace)
    raise Parsed

argparse.ArgumentParser.parse_args = parse_and_stop
results = []
for argv in json.loads(sys.stdin.read()):
    sys.argv = argv
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(argv[0], run_name="__main__")
        results.append("ran without parsing a command line")
    except Parsed:
        results.append(None)
    except SystemExit as e:
        results.append(None if e.code in (0, None) else stderr.getvalue().strip() or f"exit code {e.code}")
    except Exception as e:
        results.append(f"{type(e).__name__}: {e}")
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def benchmark_parses() -> dict[str, str | None]:
    """For each documented benchmark command line, and each script's `--help`: None if it parsed, else the error."""
    argvs = [command.words[1:] for command in BENCHMARK_COMMANDS]
    argvs += [[script, "--help"] for script in sorted({argv[0] for argv in argvs}) if (ROOT / script).is_file()]
    argvs = [argv for argv in argvs if (ROOT / argv[0]).is_file()]
    # the scripts' helpers from benchmarks/; nnunet_dca as installed, which is what the tests test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "benchmarks"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", PARSE_ONLY], input=json.dumps(argvs), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return dict(zip((shlex.join(argv) for argv in argvs), json.loads(done.stdout.strip().splitlines()[-1])))


@pytest.mark.parametrize("command", BENCHMARK_COMMANDS, ids=str)
def test_benchmark_command_parses(command, benchmark_parses):
    """The script exists, its --help exits 0, and the command line as documented passes the script's own parser
    (the benchmark itself does not run)."""
    script = command.words[1]
    assert (ROOT / script).is_file(), f"{command}: no script {script}"
    assert benchmark_parses[shlex.join([script, "--help"])] is None, \
        f"{script} --help fails: {benchmark_parses[shlex.join([script, '--help'])]}"
    error = benchmark_parses[shlex.join(command.words[1:])]
    assert error is None, f"no longer parses: {command}\n{error}"


# the README as a first page

def test_readme_is_short():
    size = len(README.read_bytes())
    assert size < README_MAX_BYTES, f"README.md is {size} bytes; the rest belongs in a page under docs/"


def test_readme_first_screen_installs_and_runs_the_demo():
    _, blocks = split_page(README.read_text())
    shell = [(number, line.strip()) for block in blocks if block.language in SHELL_LANGUAGES
             for number, line in block.lines]
    install = [number for number, line in shell if re.match(r"^(python3? -m )?pip install ", line)]
    demo = [number for number, line in shell if line.startswith("nnunet-dca demo")]
    assert install and install[0] <= FIRST_SCREEN_LINES, f"the install command is not within the first " \
                                                          f"{FIRST_SCREEN_LINES} lines of README.md: {install}"
    assert demo and demo[0] <= FIRST_SCREEN_LINES, f"`nnunet-dca demo` is not within the first {FIRST_SCREEN_LINES} " \
                                                    f"lines of README.md: {demo}"


def test_ci_runs_the_readmes_test_command():
    """.ci/run calls exactly the test command of the README's first screen."""
    _, blocks = split_page(README.read_text())
    tests = [shlex.join(words) for block in blocks if block.language in SHELL_LANGUAGES
             for number, line in block.lines if number <= FIRST_SCREEN_LINES
             for words in simple_commands(line) if "pytest" in words]
    assert tests, "no test command on the README's first screen"
    ci = [shlex.join(words) for line in (ROOT / ".ci" / "run").read_text().splitlines()
          for words in simple_commands(line)]
    assert tests[0] in ci, f"the README's test command {tests[0]!r} is not what .ci/run calls: {ci}"
