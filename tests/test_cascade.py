"""nnU-Net's cascade with DCA: 3d_lowres, then 3d_cascade_fullres on its segmentations, on both routes.

A cascade configuration trains on the segmentations its previous stage's validation exported to
predicted_next_stage/<its own name>, one per name in the previous stage's `next_stage`; add-config therefore
adds a DCA cascade configuration there. The end-to-end tests plan a real cascade for the demo's task.
"""

import json
from pathlib import Path

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from conftest import Demo, run
from nnunet_dca.demo import PLANNING_SETTINGS, TASK_ID, write_short_trainer
from nnunet_dca.msd import LABELS, MODALITIES
from nnunet_dca.plans import add_dca_configuration
from plans_examples import cascade_plans
from test_end_to_end import CPU, assert_same_geometry, dca_weights, final_checkpoint, model_folder

CASCADE_PLANS = "nnUNetCascadePlans"
# a 10 MB VRAM target shrinks the 3d_fullres patch to a tenth of the demo's images, small enough that nnU-Net
# plans 3d_lowres and 3d_cascade_fullres as it does for large images
GPU_MEMORY_TARGET_GB = 0.01
# one iteration, and no test-time mirroring: 3D validation would otherwise predict every tile eight times
STOCK_TRAINER = "nnUNetTrainer_cascade_e2e"
DCA_TRAINER = "nnUNetTrainerDCA_cascade_e2e"


# add_dca_configuration on plans with a cascade

def add(plans: dict, tmp_path: Path, source: str, **kwargs) -> tuple[str, dict]:
    """add_dca_configuration on `plans` in a file; the name and the plans written."""
    plans_file = tmp_path / "nnUNetPlans.json"
    plans_file.write_text(json.dumps(plans))
    name = add_dca_configuration(str(plans_file), source, **kwargs)
    return name, json.loads(plans_file.read_text())


def next_stages(plans: dict, configuration: str) -> list[str] | None:
    return PlansManager(plans).get_configuration(configuration).next_stage_names


def test_a_cascade_dca_configuration_joins_its_previous_stages_next_stage_and_nothing_else_changes(tmp_path):
    plans = cascade_plans({"next_stage": "3d_cascade_fullres"})
    name, written = add(plans, tmp_path, "3d_cascade_fullres")
    assert PlansManager(written).get_configuration(name).previous_stage_name == "3d_lowres"
    before, after = plans["configurations"], written["configurations"]
    assert after["3d_lowres"] == {**before["3d_lowres"], "next_stage": ["3d_cascade_fullres", name]}
    assert {key: value for key, value in after.items() if key not in (name, "3d_lowres")} == \
        {key: value for key, value in before.items() if key != "3d_lowres"}


def test_an_inherited_next_stage_is_kept_in_the_previous_stage_and_its_parent_is_left_alone(tmp_path):
    plans = cascade_plans({})
    plans["configurations"]["3d_fullres"]["next_stage"] = ["3d_cascade_fullres"]  # 3d_lowres inherits it
    name, written = add(plans, tmp_path, "3d_cascade_fullres")
    assert next_stages(written, "3d_lowres") == ["3d_cascade_fullres", name]
    assert written["configurations"]["3d_fullres"] == plans["configurations"]["3d_fullres"]


def test_a_source_inheriting_the_previous_stage_makes_a_cascade_configuration_too(tmp_path):
    plans = cascade_plans({})  # and no next_stage anywhere: the new name starts the list
    plans["configurations"]["3d_cascade_fullres_bs4"] = {"inherits_from": "3d_cascade_fullres", "batch_size": 4}
    name, written = add(plans, tmp_path, "3d_cascade_fullres_bs4")
    assert next_stages(written, "3d_lowres") == [name]


def test_overwriting_a_cascade_dca_configuration_lists_it_once(tmp_path):
    name, written = add(cascade_plans({"next_stage": "3d_cascade_fullres"}), tmp_path, "3d_cascade_fullres")
    _, rewritten = add(written, tmp_path, "3d_cascade_fullres", dca={"stages": 1}, overwrite=True)
    assert next_stages(rewritten, "3d_lowres") == ["3d_cascade_fullres", name]


def test_a_source_without_a_previous_stage_changes_no_next_stage(tmp_path):
    plans = cascade_plans({"next_stage": "3d_cascade_fullres"})
    name, written = add(plans, tmp_path, "3d_fullres")
    del written["configurations"][name]
    assert written["configurations"] == plans["configurations"]


# end to end: a cascade planned by nnU-Net for the demo's task, trained for one iteration per stage

@pytest.fixture(scope="module")
def cascade(demo: Demo) -> Demo:
    """The demo with nnU-Net's plans CASCADE_PLANS (2d, 3d_lowres, 3d_fullres, 3d_cascade_fullres), 3d_lowres and
    3d_fullres preprocessed, and this file's trainers written."""
    env = demo.env(PLANNING_SETTINGS)
    run(["nnUNetv2_plan_experiment", "-d", TASK_ID, "-gpu_memory_target", GPU_MEMORY_TARGET_GB,
         "-overwrite_plans_name", CASCADE_PLANS], env)
    plans = json.loads((demo.layout.preprocessed / demo.layout.dataset_name / f"{CASCADE_PLANS}.json").read_text())
    assert {"3d_lowres", "3d_cascade_fullres"} <= set(plans["configurations"]), "nnU-Net planned no cascade"
    run(["nnUNetv2_preprocess", "-d", TASK_ID, "-plans_name", CASCADE_PLANS, "-c", "3d_lowres", "3d_fullres",
         "-np", 1, 1], env)
    write_short_trainer(demo.layout.trainers, DCA_TRAINER, iterations=1, mirroring=False)
    write_short_trainer(demo.layout.trainers, STOCK_TRAINER, iterations=1, mirroring=False,
                        base="nnunetv2.training.nnUNetTrainer.nnUNetTrainer.nnUNetTrainer")
    return demo


def train(demo: Demo, configuration: str, fold: int | str, trainer: str, *options: str) -> Path:
    """nnUNetv2_train on the cascade plans; the model folder."""
    run(["nnUNetv2_train", TASK_ID, configuration, fold, "-p", CASCADE_PLANS, "-tr", trainer, *CPU, *options],
        demo.env())
    return model_folder(demo, trainer, configuration, CASCADE_PLANS)


def train_lowres(demo: Demo, trainer: str, *options: str) -> Path:
    # fold 'all' validates every case, so one run exports the segmentations of every case the cascade trains on,
    # as the five folds of a real cascade do
    return train(demo, "3d_lowres", "all", trainer, *options)


def exported_cases(lowres_model: Path, next_stage: str) -> list[str]:
    return sorted(path.name.split(".")[0] for path in (lowres_model / "predicted_next_stage" / next_stage).iterdir())


def training_cases(demo: Demo) -> list[str]:
    labels = demo.layout.raw / demo.layout.dataset_name / "labelsTr"
    return sorted(path.name.removesuffix(".nii.gz") for path in labels.glob("*.nii.gz"))


def assert_a_trained_and_validated_cascade(demo: Demo, model: Path) -> None:
    checkpoint = final_checkpoint(model)
    assert dca_weights(checkpoint)
    first_conv = next(value for key, value in checkpoint["network_weights"].items()
                      if key.startswith("encoder.") and value.ndim == 5)
    assert first_conv.shape[1] == len(MODALITIES) + len(LABELS) - 1  # the images and the lowres foreground one-hot
    validation = model / "fold_0" / "validation"
    segmentations = sorted(validation.glob("*.nii.gz"))
    assert segmentations and json.loads((validation / "summary.json").read_text())["metric_per_case"]
    for segmentation in segmentations:
        assert_same_geometry(segmentation, demo.layout.raw / demo.layout.dataset_name / "labelsTr" / segmentation.name)


@pytest.mark.e2e
def test_plans_only_cascade_trains_on_segmentations_a_trained_lowres_exports_with_val(cascade):
    lowres = train_lowres(cascade, STOCK_TRAINER)
    assert exported_cases(lowres, "3d_cascade_fullres") == training_cases(cascade)

    output = run(["nnunet-dca", "add-config", TASK_ID, "-p", CASCADE_PLANS, "-c", "3d_cascade_fullres"], cascade.env())
    name = "3d_cascade_fullres_dca"
    assert f"nnUNetv2_train {TASK_ID} 3d_lowres $fold -p {CASCADE_PLANS} --val" in output
    train_lowres(cascade, STOCK_TRAINER, "--val")  # what add-config says to run for a lowres already trained
    assert exported_cases(lowres, name) == training_cases(cascade)

    assert_a_trained_and_validated_cascade(cascade, train(cascade, name, 0, STOCK_TRAINER))


@pytest.mark.e2e
def test_trainer_route_cascade_trains_dca_on_both_stages(cascade):
    lowres = train_lowres(cascade, DCA_TRAINER)
    assert dca_weights(torch.load(lowres / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False))
    assert exported_cases(lowres, "3d_cascade_fullres") == training_cases(cascade)
    assert_a_trained_and_validated_cascade(cascade, train(cascade, "3d_cascade_fullres", 0, DCA_TRAINER))
