"""Everything a lent GPU should answer, in one command: one markdown report and its raw JSON.

    python benchmarks/gpu_check.py --out DIR [--device cuda|cpu] [--nnunet-dataset ID] [--timeout NAME=SECONDS]

Sections, cheapest and most important first, each a subprocess with its own time limit (a section may also use what
earlier sections left of theirs, so the run stays within the sum of the limits, 8 minutes on a GPU):

1. environment: the GPUs, torch, CUDA, cuDNN, nnunetv2, the allocator.
2. sdpa: which `scaled_dot_product_attention` backends take DCA's spatial attention at the Hippocampus plans' shapes,
   float16 and float32, values at each stage's width and at the queries' (as DCA gives them, every stage's values
   side by side), and which kernels DCA's own forward and backward get by default (torch.profiler).
3. trainer_step.py on the Hippocampus plans' 2d and 3d_fullres: eager, --amp, --amp --compile.
4. inference.py on the same plans.
5. nnUNetv2_train of one epoch of 50 iterations, nnUNetTrainer and nnUNetTrainerDCA, nnU-Net's defaults otherwise
   (float16 autocast, torch.compile where nnU-Net enables it), on the shared MSD Hippocampus data converted and
   preprocessed under DIR (or, with --nnunet-dataset, a dataset already in the nnU-Net folders of the environment).
6. the CUDA-parametrized tests.

A section that fails or runs out of time is recorded (exit code, the last lines of its output, seconds) and the
next one runs; DIR/gpu_check.md and DIR/gpu_check.json are rewritten after every section, so a killed run still
leaves what it did. `--device cpu` runs the same flow at tiny sizes (2d only, batch 2, one repeat, 2 training
iterations), for CI.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from nnunet_dca.demo import nnunet_command, write_short_trainer
from nnunet_dca.trainers import ext_trainer_value
from real_data import DATASET_IDS, HIPPOCAMPUS, SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
PLANS = SHARED_DATA.parent / "plans" / "Dataset004_Hippocampus" / "nnUNetPlans.json"
CONFIGURATIONS = ["2d", "3d_fullres"]
STOCK_BASE = "nnunetv2.training.nnUNetTrainer.nnUNetTrainer.nnUNetTrainer"
DCA_BASE = "nnunet_dca.trainers.nnUNetTrainerDCA.nnUNetTrainerDCA"
# seconds per section on an H100, 480 in all; on the CPU (tiny sizes, CI) a section is only kept from hanging
GPU_LIMITS = {"environment": 15, "sdpa": 30, "trainer_step": 45, "trainer_step_amp": 45, "trainer_step_compile": 90,
              "inference": 30, "training_data": 30, "training_stock": 75, "training_dca": 75, "tests": 45}
CPU_LIMIT = 300
# measured on 2 CPU cores, beyond what a CI test can spend
CPU_COMPILE_SKIP = ("on the CPU, trainer_step --amp --compile took 76 s for the tiny plans' 2d and 523 s with their "
                    "3d_fullres (2 cores); run it on a GPU")
# the CUDA-parametrized tests, less the two that first train a 3d_fullres and a plans-only model on the CPU, which
# the time limit does not hold; the one left needs the tests' demo run (about a minute on the CPU)
TESTS_SELECTION = "cuda and not 3d_fullres and not 2d_dca"
TAIL_LINES = 20


# parsing what the sections print and write

def markdown_tables(text: str) -> list[dict]:
    """Every markdown table in `text`: its title (the line above it), header, and rows as {column: cell}."""
    lines, tables = text.splitlines(), []
    for i, line in enumerate(lines[:-1]):
        if line.startswith("|") and set(lines[i + 1].replace("|", "").split()) == {"---"}:
            header = _cells(line)
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(header, _cells(row))))
            title = lines[i - 1] if i > 0 and not lines[i - 1].startswith("|") else ""
            tables.append({"title": title, "header": header, "rows": rows})
    return tables


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def key_values(text: str) -> dict[str, str]:
    """`- key: value` lines as a dict."""
    return dict(line[2:].split(": ", 1) for line in text.splitlines() if line.startswith("- ") and ": " in line)


def pytest_counts(text: str) -> dict[str, int]:
    """pytest's closing line (`1 passed, 2 skipped, 540 deselected in 5.1s`) as {outcome: count}."""
    lines = text.strip().splitlines()
    return {outcome: int(count) for count, outcome in re.findall(r"(\d+) (\w+)", lines[-1] if lines else "")}


def training_figures(results: Path, trainer: str) -> dict:
    """What nnUNetv2_train logged for `trainer` on 2d fold 0 under `results`: epoch time, pseudo Dice per label,
    whether it compiled, and the final validation's mean foreground Dice."""
    logs = list(results.glob(f"*/{trainer}__nnUNetPlans__2d/fold_0/training_log_*.txt"))
    if not logs:
        return {}
    log = max(logs, key=os.path.getmtime)
    text = log.read_text()
    epoch_times = re.findall(r"Epoch time: ([\d.]+) s", text)
    pseudo = re.findall(r"Pseudo dice (.*)", text)
    # the list prints as [np.float32(0.81), ...] (numpy 2) or [0.81, ...]: skip the type's name and its digits
    number = r"(?:float\d+\()?(nan|\d+(?:\.\d+)?(?:e-?\d+)?)"
    summary = log.parent / "validation" / "summary.json"
    validation = json.loads(summary.read_text())["foreground_mean"]["Dice"] if summary.is_file() else None
    return {"trainer": trainer, "epoch_time_s": float(epoch_times[-1]) if epoch_times else None,
            "pseudo_dice": [float(v) for v in re.findall(number, pseudo[-1])] if pseudo else [],
            "compiled": "Using torch.compile" in text, "validation_dice": validation, "log": str(log)}


@dataclass
class Section:
    """One step of the check: a command and what to make of its output."""

    name: str
    title: str
    command: list[str]
    env: dict[str, str] | None = None
    skip: str | None = None  # why it does not run, if it does not
    show: str = "stdout"  # what the report shows of a finished run: "stdout" (markdown tables) or "tail" (a log)
    figures: Callable[[str], object] = markdown_tables  # figures for the JSON, from stdout


@dataclass
class Result:
    """What a section did, as the JSON records it."""

    name: str
    title: str
    command: list[str]
    limit_s: float | None = None
    returncode: int | None = None
    timed_out: bool = False
    seconds: float = 0.0
    skipped: str | None = None
    stdout: str = ""
    output_tail: str = ""
    figures: object = None
    show: str = "stdout"

    @property
    def status(self) -> str:
        if self.skipped:
            return f"skipped: {self.skipped}"
        if self.timed_out:
            return f"timed out after {self.seconds:.1f} s (limit {self.limit_s:.1f} s)"
        return "ok" if self.returncode == 0 else f"failed (exit code {self.returncode})"


# the sections that run inside this script (`--section NAME`), in a subprocess of the check

def print_environment(device: str) -> None:
    import importlib.metadata
    import platform

    import torch

    from measure import environment

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(f"- GPUs (torch.cuda): {', '.join(gpus) if gpus else 'none'}")
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
        print(f"- nvidia-smi -L: {'; '.join(listed.splitlines())}")
    print(f"- torch: {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    version = importlib.metadata.version
    print(f"- nnunetv2: {version('nnunetv2')}, nnunet-dca {version('nnunet-dca')}")
    print(f"- python: {platform.python_version()}, {os.cpu_count()} CPUs")
    print(f"- benchmarks' environment: {environment(device)}")


@dataclass(frozen=True)
class SpatialShape:
    """One stage's spatial attention: q and k (batch, heads, tokens, head_dim), v (..., value_dim)."""

    batch: int
    heads: int
    tokens: int
    head_dim: int
    value_dim: int
    scale: float


def spatial_shapes(case) -> list[SpatialShape]:
    """The shapes each DCA stage's spatial attention gets at the case's planned batch and patch, read from one
    forward pass of the DCA network at batch 1 (on the CPU)."""
    import torch

    from nnunet_dca.dca import SpatialCrossAttention

    batch = case.configuration_manager.batch_size
    shapes = []

    def record(module, inputs) -> None:
        tokens, context = inputs[:2]  # (B, N, C_i), (B, N, C_sum)
        shapes.append(SpatialShape(batch, module.heads, tokens.shape[1], context.shape[2] // module.heads,
                                   tokens.shape[2] // module.heads, module.scale))

    network = case.build("dca")
    for module in network.modules():
        if isinstance(module, SpatialCrossAttention):
            module.register_forward_pre_hook(record)
    with torch.no_grad():
        network(torch.zeros(1, case.input_channels, *case.configuration_manager.patch_size))
    return shapes


def try_backend(backend, shape: SpatialShape, value_dim: int, dtype, device: str) -> tuple[str, str]:
    """('yes' | 'forward only' | 'no', why not) for F.scaled_dot_product_attention, forward and backward, under
    sdpa_kernel(backend) at `shape` with values `value_dim` wide."""
    import warnings

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    q, k = (torch.randn(shape.batch, shape.heads, shape.tokens, shape.head_dim, device=device, dtype=dtype,
                        requires_grad=True) for _ in range(2))
    v = torch.randn(shape.batch, shape.heads, shape.tokens, value_dim, device=device, dtype=dtype, requires_grad=True)
    answer = "no"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the kernels say why they decline in warnings
        try:
            with sdpa_kernel(backend):
                out = F.scaled_dot_product_attention(q, k, v, scale=shape.scale)
            answer = "forward only"
            out.float().sum().backward()
            answer = "yes"
        except RuntimeError as error:
            # where in PyTorch's source each warning came from says nothing about why
            reasons = [re.sub(r"\s*\(Triggered internally at .*?\)", "", str(w.message)).strip() for w in caught]
            return answer, " ".join(dict.fromkeys(reasons) or [str(error).splitlines()[0]])[:300]
    return answer, ""


def dispatched(case, dtype, device: str, batch: int = 2) -> tuple[list[str], list[str]]:
    """The ATen attention ops and the three longest device kernels of the case's DCA module, forward and backward at
    `batch`, under autocast to `dtype` where it is float16 (as nnU-Net trains on CUDA), as the default dispatch picks
    them."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from measure import synchronize

    network = case.build("dca").to(device)
    x = torch.randn(batch, case.input_channels, *case.configuration_manager.patch_size, device=device)
    with torch.no_grad():
        skips = [s.requires_grad_() for s in network.encoder(x)[:network.stages]]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as profiler:
        with torch.autocast(device, dtype=dtype, enabled=dtype == torch.float16):
            outputs = network.dca(skips)
        sum(o.float().sum() for o in outputs).backward()
        synchronize(device)
    events = profiler.key_averages()
    ops = sorted({e.key for e in events if "_scaled_dot_product" in e.key or "_attention_backward" in e.key})
    kernels = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.self_device_time_total, reverse=True)
    return ops, [e.key[:80] for e in kernels[:3]]


def print_sdpa(plans: str, configurations: list[str], device: str) -> None:
    import torch
    from torch.nn.attention import SDPBackend

    from cases import plans_cases
    from measure import environment, print_table

    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                SDPBackend.MATH]
    dtypes = [torch.float16, torch.float32]
    rows, reasons, dispatch_rows = [], {}, []
    for case in plans_cases(plans, configurations):
        shapes = spatial_shapes(case)
        first = shapes[0]  # the stages differ only in their values' width
        widths = ", ".join(str(s.value_dim) for s in shapes)
        variants = [(str(s.value_dim), s.value_dim) for s in shapes] + [(f"{first.head_dim} ({widths} side by side)",
                                                                          first.head_dim)]
        for dtype in dtypes:
            dtype_name = str(dtype).removeprefix("torch.")
            for label, value_dim in variants:
                cells = []
                for backend in backends:
                    answer, reason = try_backend(backend, first, value_dim, dtype, device)
                    cells.append(answer)
                    if reason:  # the first refusal of each backend and dtype; the others differ in the widths
                        reasons.setdefault(f"{backend.name}, {dtype_name}", f"(values {value_dim} wide) {reason}")
                rows.append(f"| {case.name} | {first.batch} x {first.heads} x {first.tokens} | {dtype_name} | "
                            f"{first.head_dim} | {label} | {' | '.join(cells)} |")
            ops, kernels = dispatched(case, dtype, device)
            dispatch_rows.append(f"| {case.name} | {dtype_name} | {', '.join(ops) or '-'} | "
                                 f"{', '.join(kernels) or '-'} |")
    print_table(f"SDPA backends for DCA's spatial attention at the plans' shapes (forward and backward under "
                f"sdpa_kernel); {environment(device)}",
                ["config", "batch x heads x tokens", "dtype", "q/k head dim", "value head dim",
                 *(b.name for b in backends)], rows)
    print("\nWhy not (the kernels' own words):\n")
    print("\n".join(f"- {where}: {reason}" for where, reason in reasons.items()) or "- every backend ran")
    print()
    print_table("What DCA's own forward and backward run by default (torch.profiler, batch 2; float16: under autocast, "
                "as nnU-Net trains)", ["config", "dtype", "ATen attention ops", "longest device kernels"],
                dispatch_rows)


def prepare_data() -> None:
    from real_data import prepare

    print(prepare("msd-hippocampus", "2d"))


# the check

def tiny_plans(out: Path) -> Path:
    """A copy of the Hippocampus plans with every configuration's batch size 2, its dataset.json beside it."""
    plans = json.loads(PLANS.read_text())
    for configuration in plans["configurations"].values():
        if "batch_size" in configuration:
            configuration["batch_size"] = 2
    folder = out / "tiny_plans"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(PLANS.with_name("dataset.json"), folder / "dataset.json")
    (folder / PLANS.name).write_text(json.dumps(plans, indent=2))
    return folder / PLANS.name


def sections(args: argparse.Namespace, out: Path) -> list[Section]:
    """The sections in the order they run, with their commands and environments; writes what they read into `out`
    (the CPU flow's plans, the trainers of 2 or 50 iterations)."""
    cpu = args.device == "cpu"
    python, script = sys.executable, str(Path(__file__).resolve())
    no_plans = None if PLANS.is_file() else f"needs nnU-Net's real plans at {PLANS}"
    plans = str(tiny_plans(out) if cpu and not no_plans else PLANS)
    # on the CPU 3d_fullres keeps its 40 x 56 x 40 patch at batch 2: a minute per trainer_step run on 2 loaded cores
    configurations = ["-c", *(["2d"] if cpu else CONFIGURATIONS)]
    step_repeats, inference_repeats = ("1", "1") if cpu else ("5", "3")
    step = [python, str(ROOT / "benchmarks" / "trainer_step.py"), "--plans", plans, *configurations,
            "--device", args.device, "--repeats", step_repeats]

    nnunet = out / "nnunet"
    folders = {"nnUNet_raw": str(nnunet / "nnUNet_raw"), "nnUNet_preprocessed": str(nnunet / "nnUNet_preprocessed")}
    if args.nnunet_dataset:
        folders = {key: os.environ[key] for key in ("nnUNet_raw", "nnUNet_preprocessed") if key in os.environ}
    trainers = nnunet / "trainers"
    env = {**os.environ, **folders, "nnUNet_results": str(nnunet / "nnUNet_results"),
           "nnUNet_extTrainer": os.pathsep.join([str(trainers),
                                                 ext_trainer_value(os.environ.get("nnUNet_extTrainer"))])}
    no_data = (None if args.nnunet_dataset or HIPPOCAMPUS.is_dir()
               else f"needs the MSD Hippocampus data at {HIPPOCAMPUS}")
    dataset = args.nnunet_dataset or str(DATASET_IDS["msd-hippocampus"])
    iterations = 2 if cpu else 50

    def training(name: str, base: str) -> Section:
        trainer = f"{base.rsplit('.', 1)[1]}_gpucheck"
        if not no_data:
            write_short_trainer(trainers, trainer, iterations, base=base, batch_size=2 if cpu else None)
        return Section(name, f"nnUNetv2_train {trainer} (one epoch of {iterations} iterations)",
                       [nnunet_command("nnUNetv2_train"), dataset, "2d", "0", "-tr", trainer, "-device", args.device],
                       env, no_data, "tail", lambda stdout: training_figures(nnunet / "nnUNet_results", trainer))

    return [
        Section("environment", "Environment", [python, script, "--section", "environment", "--device", args.device],
                show="stdout", figures=key_values),
        Section("sdpa", "SDPA backends of DCA's spatial attention",
                [python, script, "--section", "sdpa", "--plans", plans, *configurations, "--device", args.device],
                skip=no_plans),
        Section("trainer_step", "Training step, float32", step, skip=no_plans),
        Section("trainer_step_amp", "Training step, --amp", [*step, "--amp"], skip=no_plans),
        Section("trainer_step_compile", "Training step, --amp --compile", [*step, "--amp", "--compile"],
                skip=no_plans or (CPU_COMPILE_SKIP if cpu else None)),
        Section("inference", "Sliding-window inference",
                [python, str(ROOT / "benchmarks" / "inference.py"), "--plans", plans, *configurations,
                 "--device", args.device, "--repeats", inference_repeats], skip=no_plans),
        Section("training_data", "MSD Hippocampus converted, planned and preprocessed (2d)",
                [python, script, "--section", "prepare"], env,
                skip="--nnunet-dataset names a prepared dataset" if args.nnunet_dataset else no_data, show="tail",
                figures=lambda stdout: {"dataset": stdout.strip().splitlines()[-1]} if stdout.strip() else {}),
        training("training_stock", STOCK_BASE),
        training("training_dca", DCA_BASE),
        Section("tests", f"The CUDA-parametrized tests (pytest -k {TESTS_SELECTION!r})",
                [python, "-m", "pytest", "-k", TESTS_SELECTION, "-q", "-p", "no:cacheprovider",
                 "--basetemp", str(out / "pytest")], show="tail", figures=pytest_counts),
    ]


def run_section(section: Section, limit: float) -> Result:
    """Runs the section's command in its own process group, killed with its children at `limit` seconds."""
    result = Result(section.name, section.title, section.command, limit_s=limit, show=section.show)
    start = time.monotonic()
    process = subprocess.Popen(section.command, cwd=ROOT, env=section.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        result.timed_out = True
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    finally:  # this check interrupted: its section must not go on alone
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    result.seconds = time.monotonic() - start
    result.returncode = None if result.timed_out else process.returncode
    result.stdout = stdout
    result.output_tail = "\n".join((stdout + stderr).rstrip().splitlines()[-TAIL_LINES:])
    if result.returncode == 0:
        try:
            result.figures = section.figures(stdout)
        except (OSError, ValueError, IndexError) as error:  # the figures are a convenience; the output is kept
            result.figures = {"unparsed": f"{type(error).__name__}: {error}"}
    return result


def training_table(results: list[Result]) -> list[str]:
    """The trainings' figures as markdown table lines, none if no training has finished."""
    rows = [r for r in results if r.name.startswith("training_") and isinstance(r.figures, dict)
            and "epoch_time_s" in r.figures]
    if not rows:
        return []
    lines = ["| trainer | compiled | epoch time (s) | pseudo Dice (per label; mean) | final validation Dice | "
             "wall (s) |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        f = r.figures
        dice = [d for d in f["pseudo_dice"] if not math.isnan(d)]
        mean = f"{sum(dice) / len(dice):.4f}" if dice else "-"
        validation = f"{f['validation_dice']:.4f}" if f["validation_dice"] is not None else "-"
        lines.append(f"| {f['trainer']} | {'yes' if f['compiled'] else 'no'} | "
                     f"{f['epoch_time_s']} | {', '.join(map(str, f['pseudo_dice']))}; {mean} | {validation} | "
                     f"{r.seconds:.0f} |")
    return lines


def render(run: dict, results: list[Result]) -> str:
    """The markdown report of the sections run so far."""
    lines = [f"# GPU check ({run['device']})", "",
             f"`{run['command']}`, started {run['started']}, {run['seconds']:.0f} s so far"
             f"{'' if run['finished'] else ' (still running, or killed)'}.", ""]
    if run["device"] == "cpu":
        lines += ["CPU mode: tiny sizes (the plans' 2d at batch 2, one repeat, trainings of 2 iterations at batch 2), "
                  "to check the flow, not to measure.", ""]
    lines += ["| section | result | seconds |", "| --- | --- | --- |"]
    lines += [f"| {r.name} | {r.status} | {r.seconds:.1f} |" for r in results]
    training = training_table(results)
    if training:
        lines += ["", "Training (nnUNetv2_train 2d fold 0, one epoch; wall time includes start-up and the final "
                      "validation):", "", *training, "",
                  f"nnU-Net compiles (nnUNetTrainer._do_i_compile) unless the device is the CPU or MPS, on Windows, or "
                  f"where nnUNet_compile is false; nnUNet_compile was {run['nnUNet_compile']}."]
    for r in results:
        lines += ["", f"## {r.name}: {r.title}", "", f"`{shlex.join(r.command)}`", "", r.status]
        if r.skipped:
            continue
        if r.returncode == 0 and r.show == "stdout":
            lines += ["", r.stdout.rstrip()]
        else:
            tail = r.output_tail if r.returncode != 0 else "\n".join(r.output_tail.splitlines()[-5:])
            lines += ["", "```", tail or "(no output)", "```"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, run: dict, results: list[Result]) -> Path:
    """Rewrites gpu_check.md and gpu_check.json in `out`; returns the report's path."""
    (out / "gpu_check.json").write_text(json.dumps({"run": run, "sections": [asdict(r) for r in results]}, indent=2))
    report = out / "gpu_check.md"
    report.write_text(render(run, results))
    return report


def check(args: argparse.Namespace) -> Path:
    """Runs the sections in turn, rewriting the report after each; returns the report's path."""
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    run = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "device": args.device,
           "started": datetime.datetime.now().isoformat(timespec="seconds"), "seconds": 0.0, "finished": False,
           "nnUNet_compile": os.environ.get("nnUNet_compile", "unset")}
    results: list[Result] = []
    write_report(out, run, results)
    spare = 0.0  # seconds earlier sections left of their limits
    for section in sections(args, out):
        default = CPU_LIMIT if args.device == "cpu" else GPU_LIMITS[section.name]
        if section.skip:
            results.append(Result(section.name, section.title, section.command, skipped=section.skip))
            spare += default
        elif section.name in args.timeout:  # an explicit limit is exact
            results.append(run_section(section, args.timeout[section.name]))
        else:
            results.append(run_section(section, default + spare))
            spare = max(0.0, default + spare - results[-1].seconds)
        run["seconds"] = time.monotonic() - start
        print(f"{results[-1].name}: {results[-1].status} ({results[-1].seconds:.0f} s)", flush=True)
        write_report(out, run, results)
    run["finished"] = True
    return write_report(out, run, results)


def parse_limit(text: str) -> tuple[str, float]:
    """--timeout's NAME=SECONDS as (name, seconds)."""
    name, _, seconds = text.partition("=")
    if name not in GPU_LIMITS:
        raise argparse.ArgumentTypeError(f"{name!r} is not a section; the sections: {', '.join(GPU_LIMITS)}")
    try:
        return name, float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=SECONDS, e.g. tests=120") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="the folder of gpu_check.md, gpu_check.json and the nnU-Net folders")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: the same flow at tiny sizes, to test it without a GPU")
    parser.add_argument("--nnunet-dataset", metavar="ID",
                        help="train on this dataset, already preprocessed (2d) in the nnU-Net folders the "
                             "environment names, instead of the shared MSD Hippocampus data")
    parser.add_argument("--timeout", type=parse_limit, action="append", default=[], metavar="NAME=SECONDS",
                        help=f"an exact time limit for one section (default on a GPU: "
                             f"{', '.join(f'{k}={v}' for k, v in GPU_LIMITS.items())}, each plus what earlier "
                             f"sections left unused; on the CPU {CPU_LIMIT} each)")
    parser.add_argument("--section", choices=["environment", "sdpa", "prepare"], help=argparse.SUPPRESS)
    parser.add_argument("--plans", help=argparse.SUPPRESS)
    parser.add_argument("-c", dest="configurations", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.section == "environment":
        print_environment(args.device)
    elif args.section == "sdpa":
        print_sdpa(args.plans, args.configurations, args.device)
    elif args.section == "prepare":
        prepare_data()
    elif not args.out:
        parser.error("--out DIR is required")
    elif args.nnunet_dataset and not os.environ.get("nnUNet_preprocessed"):
        parser.error("--nnunet-dataset needs nnUNet_raw and nnUNet_preprocessed exported, as for nnUNetv2_train")
    else:
        args.timeout = dict(args.timeout)
        # a terminated check ends its running section too (run_section's finally); the report has the rest
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        print(f"report: {check(args)}")


if __name__ == "__main__":
    main()
