"""The attention pictures of the README and docs/attention.md, from real data: a short nnUNetTrainerDCA training on the
MSD Hippocampus cases of ../shared/data (2d, fold 0) through nnUNetv2_train, then `nnunet-dca attention` on a
validation case of fold 0, with its reference label.

    python benchmarks/attention_example.py --out /tmp/attention_example --figures docs/attention_hippocampus

Everything but the pictures goes into OUT; a second run reuses OUT's dataset and finished training.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from nnunet_dca.demo import nnunet_command, write_short_trainer
from nnunet_dca.trainers import trainer_dir
from nnunet_training import set_up_folders

TRAINER = "nnUNetTrainerDCA_example"
CONFIGURATION = "2d"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for nnU-Net's folders and the training")
    parser.add_argument("--figures", type=Path, required=True, help="folder for the pictures and attention.json")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=300, help="iterations per epoch")
    parser.add_argument("--batch-size", type=int, default=32, help="instead of the plans' batch size, for a CPU")
    parser.add_argument("--case", help="a validation case of fold 0 (default: the first)")
    parser.add_argument("--query-label", default=None, help="passed on to nnunet-dca attention")
    parser.add_argument("-device", dest="device", default="cpu")
    args = parser.parse_args()

    out = args.out.absolute()
    dataset = set_up_folders("msd-hippocampus", CONFIGURATION, out, workers=1)
    trainers = out / "trainers"
    write_short_trainer(trainers, TRAINER, args.iterations, args.epochs, batch_size=args.batch_size)
    os.environ["nnUNet_extTrainer"] = os.pathsep.join([str(trainers), trainer_dir()])
    model = out / "nnUNet_results" / dataset / f"{TRAINER}__nnUNetPlans__{CONFIGURATION}"
    if not (model / "fold_0" / "checkpoint_final.pth").is_file():
        resume = ["--c"] if (model / "fold_0" / "checkpoint_latest.pth").is_file() else []
        print(f"training {TRAINER} ({args.epochs} x {args.iterations} iterations, batch {args.batch_size}) into "
              f"{model}", flush=True)
        run([nnunet_command("nnUNetv2_train"), dataset, CONFIGURATION, "0", "-tr", TRAINER, "-device", args.device,
             *resume], out / "train.log")

    split = json.loads((out / "nnUNet_preprocessed" / dataset / "splits_final.json").read_text())[0]
    case = args.case or sorted(split["val"])[0]
    if case not in split["val"]:
        sys.exit(f"{case} is not a validation case of fold 0; those are {sorted(split['val'])}")
    raw = out / "nnUNet_raw" / dataset
    query = ["--query-label", args.query_label] if args.query_label else []
    run([nnunet_command("nnunet-dca"), "attention", "-d", dataset, "-c", CONFIGURATION, "-tr", TRAINER, "-f", "0",
         "-i", str(raw / "imagesTr" / f"{case}_0000.nii.gz"), "--label", str(raw / "labelsTr" / f"{case}.nii.gz"),
         "-o", str(args.figures), "--overwrite", "-device", args.device, *query], None)


def run(command: list[str], log: Path | None) -> None:
    """Runs a command, its output into `log` (or through), and exits with its last line if it fails."""
    with open(log, "a") if log else open(os.devnull, "w") as f:
        result = subprocess.run(command, stdout=f if log else None, stderr=subprocess.STDOUT if log else None)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit code {result.returncode})" + (f"; see {log}" if log else ""))


if __name__ == "__main__":
    main()
