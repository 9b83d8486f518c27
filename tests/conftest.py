"""Shared fixtures of the end-to-end tests: one demo run, whose dataset, plans and model the other tests reuse.

nnU-Net's commands start slowly (seconds of imports, spawned worker processes), so the end-to-end tests share
one `nnunet-dca demo` run (synthetic MSD task converted, 2d planned and preprocessed, nnUNetTrainerDCA
trained, test images predicted and scored) and train everything else for one iteration.
Skip them with `python -m pytest -m "not e2e"`.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pytest

from nnunet_dca.demo import DEMO_SETTINGS, PLANNING_SETTINGS, TASK_ID, DemoLayout, nnunet_command, write_short_trainer
from slurm_cluster import slurm_cluster  # noqa: F401 (the fixture, for every test module)

DEMO_ITERATIONS = 3
# trainers of one epoch of one iteration, written next to the demo's trainer (first on nnUNet_extTrainer)
DCA_STEP_TRAINER = "nnUNetTrainerDCA_e2e"
STOCK_STEP_TRAINER = "nnUNetTrainer_e2e"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: drives nnU-Net's command line in subprocesses (minutes)")


def run(command: list[str | Path], env: Mapping[str, str] | None = None) -> str:
    """Runs a console script of this environment (nnUNetv2_*, nnunet-dca); returns its output, fails the test
    with the output's end if it exits non-zero."""
    command = [nnunet_command(str(command[0])), *map(str, command[1:])]
    result = subprocess.run(command, env=dict(env) if env is not None else None, capture_output=True, text=True)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited with {result.returncode}:\n{output[-4000:]}", pytrace=False)
    return output


class Demo:
    """A finished demo run: its folders (DemoLayout), its console output, and an environment for more commands."""

    def __init__(self, layout: DemoLayout, output: str) -> None:
        self.layout = layout
        self.output = output

    def env(self, settings: Mapping[str, str] = DEMO_SETTINGS, **overrides: str) -> dict[str, str]:
        return {**self.layout.environment(settings), **overrides}


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    out = tmp_path_factory.mktemp("e2e") / "demo"
    output = run(["nnunet-dca", "demo", "--out", out, "--iterations", DEMO_ITERATIONS, "--device", "cpu"])
    layout = DemoLayout(out)
    write_short_trainer(layout.trainers, DCA_STEP_TRAINER, iterations=1)
    write_short_trainer(layout.trainers, STOCK_STEP_TRAINER, iterations=1,
                        base="nnunetv2.training.nnUNetTrainer.nnUNetTrainer.nnUNetTrainer")
    return Demo(layout, output)


def model_folder(demo: Demo, trainer: str, configuration: str, plans: str = "nnUNetPlans") -> Path:
    return demo.layout.results / demo.layout.dataset_name / f"{trainer}__{plans}__{configuration}"


@pytest.fixture(scope="session")
def stock_2d_model(demo: Demo) -> Path:
    """The model folder of STOCK_STEP_TRAINER (stock nnUNetTrainer, one iteration) on the demo's 2d, fold 0."""
    run(["nnUNetv2_train", TASK_ID, "2d", 0, "-tr", STOCK_STEP_TRAINER, "-device", "cpu"], demo.env())
    return model_folder(demo, STOCK_STEP_TRAINER, "2d")


@pytest.fixture(scope="session")
def dca_3d_fullres_model(demo: Demo) -> Path:
    """The model folder of DCA_STEP_TRAINER (nnUNetTrainerDCA, one iteration) on the demo's 3d_fullres, fold 0."""
    run(["nnUNetv2_preprocess", "-d", TASK_ID, "-c", "3d_fullres", "-np", 1], demo.env(PLANNING_SETTINGS))
    run(["nnUNetv2_train", TASK_ID, "3d_fullres", 0, "-tr", DCA_STEP_TRAINER, "-device", "cpu"], demo.env())
    return model_folder(demo, DCA_STEP_TRAINER, "3d_fullres")


@dataclass(frozen=True)
class PlansOnlyModel:
    folder: Path  # the model folder
    add_config_output: str  # what nnunet-dca add-config printed


@pytest.fixture(scope="session")
def plans_only_2d_model(demo: Demo) -> PlansOnlyModel:
    """The plans-only route: the demo's plans get 2d_dca (nnunet-dca add-config), trained by STOCK_STEP_TRAINER
    (stock nnUNetTrainer, one iteration) on fold 0."""
    output = run(["nnunet-dca", "add-config", TASK_ID, "--name", "2d_dca"], demo.env())
    run(["nnUNetv2_train", TASK_ID, "2d_dca", 0, "-tr", STOCK_STEP_TRAINER, "-device", "cpu"], demo.env())
    return PlansOnlyModel(model_folder(demo, STOCK_STEP_TRAINER, "2d_dca"), output)
