"""nnU-Net's own command line end to end with DCA, on the demo's synthetic MSD task (CPU, a few iterations).

The `demo` fixture (conftest.py) has converted, planned, trained nnUNetTrainerDCA, predicted and evaluated;
these tests check its results and drive the rest of the workflow from there.
"""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import DCA_STEP_TRAINER, DEMO_ITERATIONS, STOCK_STEP_TRAINER, model_folder, run
from nnunet_dca.demo import DEMO_TRAINER, PLANNING_SETTINGS, TASK_ID, write_short_trainer
from nnunet_dca.msd import LABELS

pytestmark = pytest.mark.e2e
CPU = ("-device", "cpu")
PREDICT_OPTIONS = (*CPU, "-npp", "1", "-nps", "1", "--disable_progress_bar")


def final_checkpoint(model_folder: Path) -> dict:
    return torch.load(model_folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)


def dca_weights(checkpoint: dict) -> dict[str, torch.Tensor]:
    return {key: value for key, value in checkpoint["network_weights"].items() if key.startswith("dca.")}


def assert_same_geometry(segmentation: Path, reference: Path) -> None:
    seg, ref = sitk.ReadImage(str(segmentation)), sitk.ReadImage(str(reference))
    assert seg.GetSize() == ref.GetSize(), segmentation.name
    np.testing.assert_allclose(seg.GetSpacing(), ref.GetSpacing(), rtol=1e-5, err_msg=segmentation.name)
    np.testing.assert_allclose(seg.GetOrigin(), ref.GetOrigin(), atol=1e-4, err_msg=segmentation.name)
    np.testing.assert_allclose(seg.GetDirection(), ref.GetDirection(), atol=1e-6, err_msg=segmentation.name)
    assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {int(label) for label in LABELS}, segmentation.name


def test_the_demo_scores_every_label_on_the_held_out_test_images(demo):
    summary = json.loads((demo.layout.predictions / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2", "3"}
    assert len(summary["metric_per_case"]) == 4
    for name in ("lesion", "core", "cyst", "mean"):
        assert re.search(rf"^ +{name} +\d\.\d{{3}}$", demo.output, re.MULTILINE), demo.output
    assert str(demo.layout.model) in demo.output
    assert os.listdir(demo.layout.out.parent) == ["demo"]  # nothing written beside --out


def test_the_dca_checkpoint_holds_dca_weights_beside_the_stock_unet(demo):
    checkpoint = final_checkpoint(demo.layout.model)
    assert checkpoint["trainer_name"] == DEMO_TRAINER
    assert dca_weights(checkpoint)
    assert any(key.startswith("encoder.") for key in checkpoint["network_weights"])
    assert any(key.startswith("decoder.") for key in checkpoint["network_weights"])


def test_predictions_keep_each_test_images_geometry(demo):
    images = sorted((demo.layout.raw / demo.layout.dataset_name / "imagesTs").glob("*_0000.nii.gz"))
    assert len(images) == 4
    for image in images:
        case = image.name.replace("_0000.nii.gz", ".nii.gz")
        assert_same_geometry(demo.layout.predictions / case, image)
        assert_same_geometry(demo.layout.predictions / case, demo.layout.task.test_labels / case)


def test_training_resumes_with_c(demo):
    # how a user extends a run: more epochs in the trainer, then --c continues from the last checkpoint
    write_short_trainer(demo.layout.trainers, DEMO_TRAINER, iterations=DEMO_ITERATIONS, epochs=2)
    output = run(["nnUNetv2_train", TASK_ID, "2d", 0, "-tr", DEMO_TRAINER, *CPU, "--c"], demo.env())
    assert re.findall(r": Epoch (\d+)$", output, re.MULTILINE) == ["1"]
    assert final_checkpoint(demo.layout.model)["current_epoch"] == 2


def test_plans_only_route_trains_with_a_stock_trainer_and_predicts_from_an_installed_zip(demo, plans_only_2d_model,
                                                                                         tmp_path):
    env = demo.env()
    assert f"nnUNetv2_train {TASK_ID} 2d_dca 0" in plans_only_2d_model.add_config_output
    # STOCK_STEP_TRAINER is nnUNetTrainer with one iteration: the network comes from the plans alone
    assert dca_weights(final_checkpoint(plans_only_2d_model.folder))

    zip_file = tmp_path / "model.zip"
    run(["nnUNetv2_export_model_to_zip", "-d", TASK_ID, "-o", zip_file, "-c", "2d_dca", "-tr", STOCK_STEP_TRAINER,
         "-f", 0], env)
    # elsewhere: an empty results folder, and no package trainer folder on nnUNet_extTrainer
    (tmp_path / "results").mkdir()
    elsewhere = demo.env(nnUNet_results=str(tmp_path / "results"), nnUNet_extTrainer=str(demo.layout.trainers))
    run(["nnUNetv2_install_pretrained_model_from_zip", zip_file], elsewhere)
    run(["nnUNetv2_predict", "-i", demo.layout.raw / demo.layout.dataset_name / "imagesTs", "-o", tmp_path / "pred",
         "-d", TASK_ID, "-c", "2d_dca", "-f", 0, "-tr", STOCK_STEP_TRAINER, *PREDICT_OPTIONS], elsewhere)
    references = sorted(demo.layout.task.test_labels.glob("*.nii.gz"))
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.nii.gz")) == [p.name for p in references]
    for reference in references:
        assert_same_geometry(tmp_path / "pred" / reference.name, reference)


def test_a_stock_model_fine_tunes_with_dca_through_pretrained_weights(demo, stock_2d_model, tmp_path):
    env = demo.env()
    stock_checkpoint = stock_2d_model / "fold_0" / "checkpoint_final.pth"
    warm = tmp_path / "warm.pth"
    # DCA_STEP_TRAINER, a subclass of nnUNetTrainerDCA on nnUNet_extTrainer, found as nnUNetv2_train finds it
    output = run(["nnunet-dca", "warm-start", stock_checkpoint, "-d", TASK_ID, "-c", "2d", "-tr", DCA_STEP_TRAINER,
                  "-o", warm], env)
    assert f"-tr {DCA_STEP_TRAINER} -pretrained_weights {warm}" in output

    stock = torch.load(stock_checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    written = torch.load(warm, map_location="cpu", weights_only=False)["network_weights"]
    assert dca_weights({"network_weights": written})
    assert {key: value for key, value in written.items() if not key.startswith("dca.")}.keys() == stock.keys()
    assert all(torch.equal(written[key], value) for key, value in stock.items())

    output = run(["nnUNetv2_train", TASK_ID, "2d", 0, "-tr", DCA_STEP_TRAINER, *CPU, "-pretrained_weights", warm], env)
    assert re.search(rf"Loading pretrained weights from file +{re.escape(str(warm))}", output), output[-2000:]
    assert dca_weights(final_checkpoint(model_folder(demo, DCA_STEP_TRAINER, "2d")))


def test_a_resenc_plan_trains_dca(demo):
    run(["nnUNetv2_plan_and_preprocess", "-d", TASK_ID, "-pl", "nnUNetPlannerResEncM", "-c", "2d",
         "-np", 1, "-npfp", 1], demo.env(PLANNING_SETTINGS))
    run(["nnUNetv2_train", TASK_ID, "2d", 0, "-tr", DCA_STEP_TRAINER, "-p", "nnUNetResEncUNetMPlans", *CPU],
        demo.env())
    checkpoint = final_checkpoint(model_folder(demo, DCA_STEP_TRAINER, "2d", "nnUNetResEncUNetMPlans"))
    assert dca_weights(checkpoint)
    assert any(key.startswith("encoder.stem.") for key in checkpoint["network_weights"])  # a residual encoder


def test_3d_fullres_trains_dca_and_keeps_geometry(demo, dca_3d_fullres_model):
    model = dca_3d_fullres_model
    assert any(value.ndim == 5 for value in dca_weights(final_checkpoint(model)).values())  # 3D convolutions
    validation = sorted((model / "fold_0" / "validation").glob("*.nii.gz"))
    assert validation
    for segmentation in validation:
        assert_same_geometry(segmentation, demo.layout.raw / demo.layout.dataset_name / "labelsTr" / segmentation.name)
