"""`nnunet-dca demo`: a synthetic MSD task through nnU-Net's own command line, with nnUNetTrainerDCA.

Every step is the stock `nnUNetv2_*` command a user would type, run in a subprocess with nnU-Net's folders
under the demo's output folder: convert, plan and preprocess 2d, train, predict the test images, evaluate
them against the held-out labels. Training length comes from a trainer subclass the demo writes into its own
folder on `nnUNet_extTrainer`, the same route a user takes to subclass a DCA trainer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from nnunet_dca.msd import LABELS, SyntheticTask, write_msd_task
from nnunet_dca.trainers import trainer_dir

TASK_ID = 101
TASK_NAME = "Blobs"
STEPS = 6
DEMO_TRAINER = "nnUNetTrainerDCA_demo"
DEFAULT_ITERATIONS = 100
# nnU-Net settings sized for the demo's tiny task; settings the user exported win. Data augmentation in the
# training process (0 workers) ran twice as fast as in one worker process on 2 CPU cores, nnU-Net's default of
# 8 export processes costs more in start-up than it saves, and compiling takes longer than the demo trains.
DEMO_SETTINGS = {"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "nnUNet_compile": "false"}
# the planner calls torch.set_num_threads(nnUNet_n_proc_DA), which refuses 0
PLANNING_SETTINGS = {**DEMO_SETTINGS, "nnUNet_n_proc_DA": "1"}


class DemoError(Exception):
    """A demo that cannot start or a step that failed; the message says what to do."""


def nnunet_command(name: str) -> str:
    """The path of an nnU-Net console script (or `nnunet-dca`) in this Python's environment.

    Taken from the interpreter's own folder rather than PATH, so a venv that is not activated still runs
    its own nnU-Net.
    """
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise DemoError(f"{path} not found: install nnunetv2 (and this package) into the environment of "
                        f"{sys.executable}")
    return str(path)


# a method of the class write_short_trainer writes, the override of nnunetv2's nnUNetTrainerNoMirroring
_NO_MIRRORING = '''
    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, patch_size, None
'''


def _batch_size_line(batch_size: int | None) -> str:
    # a new configuration manager: the plans the trainer saves into the model folder stay as they are
    return "" if batch_size is None else (
        f"        self.configuration_manager = type(self.configuration_manager)(\n"
        f"            {{**self.configuration_manager.configuration, 'batch_size': {batch_size}}})\n")


def write_short_trainer(folder: Path, name: str, iterations: int, epochs: int = 1,
                        base: str = "nnunet_dca.trainers.nnUNetTrainerDCA.nnUNetTrainerDCA",
                        mirroring: bool = True, batch_size: int | None = None) -> Path:
    """Writes `folder/name.py`: a subclass of `base` (a dotted class path) training `epochs` x `iterations`.

    For a folder on `nnUNet_extTrainer`. Validation during training runs a tenth as many iterations.
    `mirroring=False` turns mirroring off in training and prediction, as nnU-Net's nnUNetTrainerNoMirroring does:
    the final validation of a 3D model then predicts each tile once instead of eight times. `batch_size` replaces
    the plans' batch size (the model folder's plans.json keeps the plans').
    """
    module, base_class = base.rsplit(".", 1)
    path = Path(folder) / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    # nnUNetTrainer.__init__ records its arguments from the signature, so the subclass spells it out
    path.write_text(textwrap.dedent(f'''\
        """Written by nnunet_dca.demo: {base_class} for {epochs} epoch(s) of {iterations} iteration(s)."""
        import torch

        from {module} import {base_class}


        class {name}({base_class}):
            def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                         device: torch.device = torch.device("cuda")):
                super().__init__(plans, configuration, fold, dataset_json, device)
                self.num_epochs = {epochs}
                self.num_iterations_per_epoch = {iterations}
                self.num_val_iterations_per_epoch = {max(1, iterations // 10)}
        ''') + _batch_size_line(batch_size) + ("" if mirroring else _NO_MIRRORING))
    return path


@dataclass(frozen=True)
class DemoLayout:
    """The folders of a demo run, all under `out`."""

    out: Path

    @property
    def task(self) -> SyntheticTask:
        return SyntheticTask.at(self.out / "msd", TASK_ID, TASK_NAME)

    @property
    def dataset_name(self) -> str:
        return self.task.dataset_name

    @property
    def raw(self) -> Path:
        return self.out / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.out / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.out / "nnUNet_results"

    @property
    def trainers(self) -> Path:
        return self.out / "trainers"

    @property
    def model(self) -> Path:
        return self.results / self.dataset_name / f"{DEMO_TRAINER}__nnUNetPlans__2d"

    @property
    def predictions(self) -> Path:
        return self.out / "predictions"

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def environment(self, settings: Mapping[str, str] = DEMO_SETTINGS) -> dict[str, str]:
        """os.environ over `settings`, with nnU-Net's folders set to the demo's and its trainers first on
        nnUNet_extTrainer."""
        env = {**settings, **os.environ}
        env.update(nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed),
                   nnUNet_results=str(self.results),
                   nnUNet_extTrainer=os.pathsep.join([str(self.trainers), trainer_dir()]))
        return env


def _announce(number: int, text: str) -> None:
    print(f"[{number}/{STEPS}] {text}", flush=True)


def _run_step(number: int, title: str, command: list[str], layout: DemoLayout,
              settings: Mapping[str, str] = DEMO_SETTINGS) -> None:
    """Runs one nnU-Net command with its output in logs/; a failure raises DemoError with the log's end."""
    log = layout.logs / f"{number}_{Path(command[0]).name}.log"
    _announce(number, f"{title}: {Path(command[0]).name} {' '.join(command[1:])}")
    start = time.monotonic()
    with open(log, "w") as f:
        returncode = subprocess.run(command, env=layout.environment(settings), stdout=f,
                                    stderr=subprocess.STDOUT).returncode
    if returncode != 0:
        # the last line of a failed command is usually its exception; the whole log has the rest
        last_line = next((line.strip() for line in reversed(log.read_text().splitlines()) if line.strip()), "")
        raise DemoError(f"step {number} failed (exit code {returncode}): {last_line}; the whole log: {log}")
    print(f"      done in {time.monotonic() - start:.0f} s (log: {log})", flush=True)


def run_demo(out: Path, device: str = "cpu", iterations: int = DEFAULT_ITERATIONS) -> dict[str, float]:
    """Runs the demo into `out` (created; an existing non-empty folder is refused) and returns Dice per label."""
    if iterations < 1:
        raise DemoError(f"--iterations must be at least 1, got {iterations}")
    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DemoError(f"{out} exists and is not an empty folder; pass --out with a new folder "
                        f"(the demo only writes into folders it creates)")
    layout = DemoLayout(out)
    try:
        layout.logs.mkdir(parents=True)
    except OSError as e:
        raise DemoError(f"cannot create {out} ({e.strerror}); pass --out with a folder you can write") from e

    _announce(1, f"Writing a synthetic MSD task (two modalities, labels {list(LABELS.values())[1:]}) to "
                 f"{layout.task.folder}")
    task = write_msd_task(layout.task.folder.parent, TASK_ID, TASK_NAME)
    dataset = str(TASK_ID)
    _run_step(2, "Converting the MSD task to nnU-Net's layout",
              [nnunet_command("nnUNetv2_convert_MSD_dataset"), "-i", str(task.folder), "-np", "1"], layout)
    _run_step(3, "Planning and preprocessing the 2d configuration",
              [nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", dataset, "-c", "2d", "-np", "1", "-npfp", "1"],
              layout, PLANNING_SETTINGS)
    write_short_trainer(layout.trainers, DEMO_TRAINER, iterations)
    _run_step(4, f"Training {DEMO_TRAINER} (nnUNetTrainerDCA, 1 epoch of {iterations} iterations) on fold 0",
              [nnunet_command("nnUNetv2_train"), dataset, "2d", "0", "-tr", DEMO_TRAINER, "-device", device], layout)
    _run_step(5, "Predicting the test images",
              [nnunet_command("nnUNetv2_predict"), "-i", str(layout.raw / layout.dataset_name / "imagesTs"),
               "-o", str(layout.predictions), "-d", dataset, "-c", "2d", "-f", "0", "-tr", DEMO_TRAINER,
               "-device", device, "-npp", "1", "-nps", "1", "--disable_progress_bar"], layout)
    _run_step(6, "Evaluating against the held-out test labels",
              [nnunet_command("nnUNetv2_evaluate_folder"), str(task.test_labels), str(layout.predictions),
               "-djfile", str(layout.model / "dataset.json"), "-pfile", str(layout.model / "plans.json"),
               "-np", "1"], layout)

    summary = json.loads((layout.predictions / "summary.json").read_text())
    dice = {LABELS[key]: metrics["Dice"] for key, metrics in summary["mean"].items()}
    print(f"\nDice on {len(summary['metric_per_case'])} held-out test cases:")
    for name, value in dice.items():
        print(f"  {name:<10} {value:.3f}")
    print(f"  {'mean':<10} {summary['foreground_mean']['Dice']:.3f}")
    print(textwrap.dedent(f"""
        Where everything is:
          MSD task (input)   {layout.task.folder}
          nnU-Net folders    {layout.raw}, {layout.preprocessed}, {layout.results}
          trained model      {layout.model}
          predictions        {layout.predictions} (scores: summary.json)
          demo trainer       {layout.trainers / (DEMO_TRAINER + '.py')}
          logs               {layout.logs}
        To run nnU-Net commands on it yourself:
          export nnUNet_raw={layout.raw} nnUNet_preprocessed={layout.preprocessed} nnUNet_results={layout.results}
          export nnUNet_extTrainer={layout.environment()['nnUNet_extTrainer']}"""))
    return dice
