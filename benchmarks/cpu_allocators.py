"""nnU-Net's own commands on the CPU under each memory allocator: nnUNetv2_train and nnUNetv2_predict, stock and DCA.

What a user who trains or predicts on the CPU sees: the shared MSD Hippocampus cases (../shared/data), converted,
planned and preprocessed by nnU-Net (2d), a short training of each trainer (one epoch, fold 0, then nnU-Net's final
validation), and nnUNetv2_predict of the first training images with the trained model, each command run with
LD_PRELOAD naming the allocator's library (none for glibc malloc). Rounds alternate the allocators.

    python benchmarks/cpu_allocators.py --out cpu_allocators [--iterations 30] [--batch-size 32] [--cases 10]
                                        [--allocators glibc tcmalloc jemalloc] [--rounds 1]

The folders under --out are kept, so a second call reuses the preprocessed data.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from measure import print_table
from nnunet_dca.allocator import PRELOADABLE, SYSTEM_ALLOCATOR, find_library, install_hint
from nnunet_dca.demo import nnunet_command, write_short_trainer
from nnunet_dca.trainers import trainer_dir

DATASET = "msd-hippocampus"
# the trainers' short variants written under --out: name, and the dotted class they subclass
TRAINERS = {"stock": ("nnUNetTrainer_cpu", "nnunetv2.training.nnUNetTrainer.nnUNetTrainer.nnUNetTrainer"),
            "DCA": ("nnUNetTrainerDCA_cpu", "nnunet_dca.trainers.nnUNetTrainerDCA.nnUNetTrainerDCA")}


def allocator_environment(allocator: str) -> dict[str, str]:
    """This environment with `allocator` preloaded ("glibc" for none)."""
    environment = {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}
    if allocator != "glibc":
        library = find_library(allocator)
        if library is None:
            sys.exit(f"{allocator} is not installed on this machine: {install_hint(allocator)}")
        environment["LD_PRELOAD"] = library
    return environment


def timed(command: list[str], environment: dict[str, str], log: Path) -> float:
    """Runs one of nnU-Net's commands, its output into `log`; returns its wall time. Exits naming the log if it
    fails."""
    start = time.perf_counter()
    with open(log, "w") as f:
        result = subprocess.run([nnunet_command(command[0]), *command[1:]], env=environment, stdout=f,
                                stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed with exit code {result.returncode}: see {log}")
    return time.perf_counter() - start


def epoch_time(model_folder: Path) -> float:
    """The epoch time nnU-Net logged in the model folder's newest training log."""
    log = sorted((model_folder / "fold_0").glob("training_log_*.txt"))[-1]
    return float(re.findall(r"Epoch time: ([\d.]+) s", log.read_text())[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--iterations", type=int, default=30, help="training iterations (one epoch)")
    parser.add_argument("--batch-size", type=int, default=32, help="in place of the plans' 366 (0: the plans')")
    parser.add_argument("--cases", type=int, default=10, help="images nnUNetv2_predict predicts")
    parser.add_argument("--allocators", nargs="+", default=["glibc", *PRELOADABLE],
                        choices=["glibc", *PRELOADABLE])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    out = args.out.resolve()
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[variable] = str(out / variable)
    os.environ.setdefault("nnUNet_n_proc_DA", "2")
    trainers = out / "trainers"
    os.environ["nnUNet_extTrainer"] = os.pathsep.join([str(trainers), trainer_dir()])
    from real_data import DATASET_IDS, prepare  # after the folders are set: nnU-Net reads them at import

    dataset = prepare(DATASET, "2d")
    for name, base in TRAINERS.values():
        write_short_trainer(trainers, name, args.iterations, base=base, batch_size=args.batch_size or None)
    images = out / "predict_input"
    if not images.exists():
        images.mkdir()
        for image in sorted((out / "nnUNet_raw" / dataset / "imagesTr").glob("*"))[:args.cases]:
            os.symlink(image, images / image.name)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)

    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    for _ in range(args.rounds):
        for allocator in args.allocators:
            environment = allocator_environment(allocator)
            for network, (trainer, _) in TRAINERS.items():
                record = results.setdefault((allocator, network), {"train": [], "epoch": [], "predict": []})
                model = out / "nnUNet_results" / dataset / f"{trainer}__nnUNetPlans__2d"
                shutil.rmtree(model, ignore_errors=True)
                record["train"].append(timed(
                    ["nnUNetv2_train", str(DATASET_IDS[DATASET]), "2d", "0", "-tr", trainer, "-device", "cpu"],
                    environment, logs / f"train_{allocator}_{network}.log"))
                record["epoch"].append(epoch_time(model))
                predictions = out / "predictions" / f"{allocator}_{network}"
                shutil.rmtree(predictions, ignore_errors=True)
                record["predict"].append(timed(
                    ["nnUNetv2_predict", "-i", str(images), "-o", str(predictions), "-d", str(DATASET_IDS[DATASET]),
                     "-c", "2d", "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1",
                     "--disable_progress_bar"], environment, logs / f"predict_{allocator}_{network}.log"))

    baseline = "glibc" if "glibc" in args.allocators else args.allocators[0]
    rows = []
    for (allocator, network), record in results.items():
        medians = {key: statistics.median(values) for key, values in record.items()}
        base = {key: statistics.median(values) for key, values in results[(baseline, network)].items()}
        name = SYSTEM_ALLOCATOR if allocator == "glibc" else allocator
        rows.append(f"| {name} | {network} | {medians['epoch']:.1f} | {base['epoch'] / medians['epoch']:.2f} | "
                    f"{medians['train']:.0f} | {medians['predict']:.1f} | {base['predict'] / medians['predict']:.2f} |")
    batch = args.batch_size or "the plans'"
    print_table(f"nnU-Net on the CPU, MSD Hippocampus 2d: nnUNetv2_train (one epoch of {args.iterations} iterations "
                f"at batch {batch}, then its final validation) and nnUNetv2_predict of {args.cases} images, median of "
                f"{args.rounds} round(s); {os.cpu_count()} CPUs; speedup against {baseline}",
                ["allocator", "trainer", "epoch (s)", "epoch speedup", "nnUNetv2_train wall (s)",
                 "nnUNetv2_predict wall (s)", "predict speedup"], rows)


if __name__ == "__main__":
    main()
