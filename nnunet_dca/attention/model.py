"""A trained model, loaded as `nnUNetv2_predict` loads it, and the DCA module inside it."""

from __future__ import annotations

import contextlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_dca.dca import DCA
from nnunet_dca.doctor import EXPORT_LINE
from nnunet_dca.folders import find_dataset_name, folder_from_environment


class AttentionError(ValueError):
    """Input `nnunet-dca attention` cannot use; the message is one line that names the problem and the fix."""


@dataclass
class Model:
    """A fold's network in nnU-Net's predictor, and its DCA module."""

    predictor: nnUNetPredictor
    dca: DCA
    folder: Path  # the model folder, TRAINER__PLANS__CONFIGURATION
    fold: str
    checkpoint: str

    @property
    def network(self) -> torch.nn.Module:
        return self.predictor.network

    @property
    def spatial_dims(self) -> int:
        return len(self.predictor.configuration_manager.patch_size)


def load_model(dataset: str, configuration: str, trainer: str, plans: str, fold: str, checkpoint: str,
               device: str) -> Model:
    """The model of nnUNet_results/DATASET/TRAINER__PLANS__CONFIGURATION/fold_FOLD/CHECKPOINT on `device`, through
    nnUNetPredictor.initialize_from_trained_model_folder, so every trainer and the plans-only route load as for
    prediction. Refuses, naming what there is, a missing model folder, fold or checkpoint, a model without DCA and a
    cascade stage (its input holds the previous stage's segmentation)."""
    results = folder_from_environment("nnUNet_results")
    name = find_dataset_name(dataset, {"nnUNet_results": results})
    folder = results / name / f"{trainer}__{plans}__{configuration}"
    if not folder.is_dir():
        trained = sorted(path.name for path in (results / name).iterdir() if path.is_dir() and "__" in path.name)
        raise AttentionError(f"no model folder {folder}: {name} has {', '.join(trained) or 'no trained models'} "
                             f"(TRAINER__PLANS__CONFIGURATION); pick one with -tr, -p and -c")
    fold_folder = folder / f"fold_{fold}"
    if not fold_folder.is_dir():
        folds = sorted(path.name.removeprefix("fold_") for path in folder.glob("fold_*") if path.is_dir())
        raise AttentionError(f"fold {fold} of {folder.name} is not trained (no {fold_folder}); trained folds: "
                             f"{', '.join(folds) or 'none'}; pick one with -f")
    if not (fold_folder / checkpoint).is_file():
        saved = sorted(path.name for path in fold_folder.glob("*.pth"))
        raise AttentionError(f"no checkpoint {checkpoint} in {fold_folder}; there are {', '.join(saved) or 'none'} "
                             f"(training writes checkpoint_final.pth when it ends); pick one with -chk")
    torch_device = _device(device)
    try:
        # nnU-Net narrates: on a CPU, that it computes there; torch.compile
        with contextlib.redirect_stdout(io.StringIO()):
            predictor = nnUNetPredictor(device=torch_device, verbose=False, verbose_preprocessing=False,
                                        allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(str(folder), (fold if fold == "all" else int(fold),),
                                                           checkpoint)
    except (RuntimeError, KeyError, AssertionError, EOFError, pickle.UnpicklingError) as e:
        # the trainer class not found, weights that do not fit the network, a file that is no nnU-Net checkpoint
        hint = (f" ({EXPORT_LINE} finds nnunet-dca's trainers)" if "trainer" in str(e).lower() else
                "" if isinstance(e, RuntimeError) else "; is it a checkpoint nnUNetv2_train wrote?")
        raise AttentionError(f"cannot load {fold_folder / checkpoint}: {type(e).__name__}: {e}{hint}") from e
    # hooks on a compiled network's modules would recompile it; pictures need no compiled speed
    predictor.network = getattr(predictor.network, "_orig_mod", predictor.network).to(torch_device).eval()
    if predictor.configuration_manager.previous_stage_name is not None:
        raise AttentionError(f"{configuration} is a cascade stage: its input holds the segmentation of "
                             f"{predictor.configuration_manager.previous_stage_name}; nnunet-dca attention takes "
                             f"configurations without a previous stage (e.g. 2d, 3d_fullres, 3d_lowres)")
    dca = next((module for module in predictor.network.modules() if isinstance(module, DCA)), None)
    if dca is None:
        raise AttentionError(f"the network of {folder.name} ({type(predictor.network).__name__}) has no DCA; "
                             f"nnunet-dca attention shows DCA models: trained with nnUNetTrainerDCA (or a variant) or "
                             f"a configuration from nnunet-dca add-config")
    return Model(predictor, dca, folder, str(fold), checkpoint)


def _device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise AttentionError("-device cuda, but torch sees no CUDA GPU here; use -device cpu")
    return torch.device(device)
