"""A DCA model folder keeps the settings it was trained with, through nnU-Net's own command line.

Each fold's start copies the plans into the model folder, and prediction builds every fold from that copy. The
trainer writes its resolved dca block there, so re-planning (which drops a hand-written block) changes nothing for
the trained folds, and a fold that would train with other settings is refused before it trains.
"""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import DCA_STEP_TRAINER, run
from nnunet_dca.config import DEFAULTS
from nnunet_dca.demo import PLANNING_SETTINGS, TASK_ID, nnunet_command
from nnunet_dca.trainers.nnUNetTrainerDCA import RESOLVED_KEY
from test_end_to_end import CPU, PREDICT_OPTIONS, model_folder

pytestmark = pytest.mark.e2e
PLANS = "nnUNetPlansTokenGrid"
BLOCK = {"token_grid": [4, 4]}


def probabilities(folder: Path) -> dict[str, np.ndarray]:
    return {f.name: np.load(f)["probabilities"] for f in sorted(folder.glob("*.npz"))}


def predict(demo, plans: str, out: Path) -> dict[str, np.ndarray]:
    """nnUNetv2_predict of the demo's test images with DCA_STEP_TRAINER's fold 0 of `plans`."""
    run(["nnUNetv2_predict", "-i", demo.layout.raw / demo.layout.dataset_name / "imagesTs", "-o", out,
         "-d", TASK_ID, "-c", "2d", "-f", 0, "-tr", DCA_STEP_TRAINER, "-p", plans, "--save_probabilities",
         *PREDICT_OPTIONS], demo.env())
    return probabilities(out)


def write_plans(demo, name: str, dca: dict) -> Path:
    """Plans of their own name (model folders are per plans name) with a dca block, on the 2d data already
    preprocessed; returns the dataset's preprocessed folder."""
    dataset = demo.layout.preprocessed / demo.layout.dataset_name
    plans = json.loads((dataset / "nnUNetPlans.json").read_text())
    plans["plans_name"] = name
    plans["configurations"]["2d"]["dca"] = dca
    (dataset / f"{name}.json").write_text(json.dumps(plans, indent=4))
    return dataset


def assert_same_predictions(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> None:
    assert before.keys() == after.keys() and before
    for case, expected in before.items():
        np.testing.assert_array_equal(after[case], expected, err_msg=case)


def test_predictions_keep_the_trained_settings_after_replanning_and_a_mismatching_fold_is_refused(demo, tmp_path):
    env = demo.env()
    dataset = write_plans(demo, PLANS, BLOCK)
    run(["nnUNetv2_train", TASK_ID, "2d", 0, "-tr", DCA_STEP_TRAINER, "-p", PLANS, *CPU], env)
    model = model_folder(demo, DCA_STEP_TRAINER, "2d", PLANS)
    saved = json.loads((model / "plans.json").read_text())["configurations"]["2d"]
    assert saved[RESOLVED_KEY] == {**DEFAULTS, **BLOCK}

    before = predict(demo, PLANS, tmp_path / "before")
    # planning again writes the plans anew, without the hand-written block
    run(["nnUNetv2_plan_experiment", "-d", TASK_ID, "-overwrite_plans_name", PLANS], demo.env(PLANNING_SETTINGS))
    assert "dca" not in json.loads((dataset / f"{PLANS}.json").read_text())["configurations"]["2d"]
    saved_plans = (model / "plans.json").read_bytes()

    refused = subprocess.run([nnunet_command("nnUNetv2_train"), str(TASK_ID), "2d", "1", "-tr", DCA_STEP_TRAINER,
                              "-p", PLANS, *CPU], env=env, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "token_grid: [4, 4] there, null now" in refused.stderr, refused.stderr[-2000:]
    assert "new trainer name" in refused.stderr
    assert not list((model / "fold_1").glob("checkpoint_*.pth"))
    assert "Epoch 0" not in refused.stdout
    assert (model / "plans.json").read_bytes() == saved_plans

    assert_same_predictions(before, predict(demo, PLANS, tmp_path / "after"))


def test_a_model_folder_saved_before_the_merge_key_predicts_as_it_was_trained(demo, tmp_path):
    # nnunet-dca before the merge key trained nnUNetTrainerDCA with the paper's merge and saved no merge key
    plans = "nnUNetPlansPaperMerge"
    write_plans(demo, plans, {"merge": "paper"})
    run(["nnUNetv2_train", TASK_ID, "2d", 0, "-tr", DCA_STEP_TRAINER, "-p", plans, *CPU], demo.env())
    model = model_folder(demo, DCA_STEP_TRAINER, "2d", plans)
    before = predict(demo, plans, tmp_path / "before")
    saved = json.loads((model / "plans.json").read_text())
    del saved["configurations"]["2d"][RESOLVED_KEY]["merge"]
    (model / "plans.json").write_text(json.dumps(saved, indent=4))
    assert_same_predictions(before, predict(demo, plans, tmp_path / "after"))
