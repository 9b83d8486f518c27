"""Small plans in the layout nnU-Net 2.8 writes them (nnUNetv2_plan_and_preprocess), for fast network tests."""

import copy

import pytest
import torch
from torch import nn

_COMMON_ARCH_KWARGS = {
    "conv_bias": True,
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}
_KW_REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]

PLAIN_2D = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 5,
        "features_per_stage": [8, 16, 32, 64, 64],
        "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3]] * 5,
        "strides": [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]],
        "n_conv_per_stage": [2, 2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2, 2],
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        **_COMMON_ARCH_KWARGS,
    },
    "_kw_requires_import": _KW_REQUIRES_IMPORT,
}

PLAIN_3D = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 4,
        "features_per_stage": [8, 16, 32, 64],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2],
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        **_COMMON_ARCH_KWARGS,
    },
    "_kw_requires_import": _KW_REQUIRES_IMPORT,
}

RESENC_2D = {  # nnUNetPlannerResEncM's layout: n_blocks_per_stage instead of n_conv_per_stage
    "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
    "arch_kwargs": {
        "n_stages": 5,
        "features_per_stage": [8, 16, 32, 64, 64],
        "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3]] * 5,
        "strides": [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]],
        "n_blocks_per_stage": [1, 3, 4, 6, 6],
        "n_conv_per_stage_decoder": [1, 1, 1, 1],
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        **_COMMON_ARCH_KWARGS,
    },
    "_kw_requires_import": _KW_REQUIRES_IMPORT,
}

RESENC_3D = {  # the 3D residual encoder, with the 3D configuration's layout
    "network_class_name": RESENC_2D["network_class_name"],
    "arch_kwargs": {**PLAIN_3D["arch_kwargs"], "n_blocks_per_stage": [1, 2, 2, 2],
                    "n_conv_per_stage_decoder": [1, 1, 1]},
    "_kw_requires_import": _KW_REQUIRES_IMPORT,
}
del RESENC_3D["arch_kwargs"]["n_conv_per_stage"]

PRIMUS_3D = {  # a network nnU-Net builds from plans that is not a U-Net: a ViT encoder, a patch decoder, no skips
    "network_class_name": "dynamic_network_architectures.architectures.primus.Primus",
    "arch_kwargs": {"embed_dim": 396, "patch_embed_size": [8, 8, 8], "eva_depth": 1, "eva_numheads": 6,
                    "input_shape": [16, 32, 32]},
    "_kw_requires_import": [],
}

PATCH_SIZES = {"2d": [64, 48], "3d_fullres": [16, 32, 32], "2d_resenc": [64, 48]}


def _configuration(architecture: dict, patch_size: list, data_identifier: str) -> dict:
    dims = len(patch_size)
    return {
        "data_identifier": data_identifier,
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": patch_size,
        "median_image_size_in_voxels": [2 * s for s in patch_size],
        "spacing": [1.0] * dims,
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": copy.deepcopy(architecture),
        "batch_dice": True,
    }


def make_plans() -> dict:
    """A fresh plans dict with a 2D and a 3D PlainConvUNet configuration and a 2D ResEnc one."""
    return {
        "dataset_name": "Dataset999_Tiny",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [32, 128, 96],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "2d": _configuration(PLAIN_2D, PATCH_SIZES["2d"], "nnUNetPlans_2d"),
            "3d_fullres": _configuration(PLAIN_3D, PATCH_SIZES["3d_fullres"], "nnUNetPlans_3d_fullres"),
            "2d_resenc": _configuration(RESENC_2D, PATCH_SIZES["2d_resenc"], "nnUNetPlans_2d"),
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 1.0, "mean": 0.5, "median": 0.5, "min": 0.0, "percentile_00_5": 0.0,
                  "percentile_99_5": 1.0, "std": 0.2}
        },
    }


def cascade_plans(lowres_next_stage: dict) -> dict:
    """make_plans() with a 3d_lowres (its `next_stage` keys given) and a 3d_cascade_fullres, as nnU-Net's planner
    writes them."""
    plans = make_plans()
    plans["configurations"]["3d_lowres"] = {"inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres",
                                            **lowres_next_stage}
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    return plans


DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2},
                "numTraining": 2, "file_ending": ".nii.gz"}
NUM_CLASSES = 3



class NotAUNet(nn.Module):
    """A network nnU-Net can build from plans that has no encoder skips."""

    def __init__(self, input_channels: int, num_classes: int, **arch_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(input_channels, num_classes, 1)


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny networks run faster on one thread, and a busy machine cannot stall OpenMP's spinning threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
