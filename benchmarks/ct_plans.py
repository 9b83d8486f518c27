"""The plans the benchmarks build networks from: plain U-Nets as nnU-Net plans them for CT."""

from __future__ import annotations

from nnunet_dca.trainers.nnUNetTrainerDCA import nnUNetTrainerDCA, nnUNetTrainerDCA_FullGrid

# one CT channel, background and two organs
DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ1": 1, "organ2": 2},
                "numTraining": 1, "file_ending": ".nii.gz"}


def ct_configuration(patch_size: list[int], n_stages: int, max_features: int) -> dict:
    """A plain U-Net configuration as nnUNetv2_plan_and_preprocess writes it for CT (3x3 convs, 2 per stage)."""
    dims = len(patch_size)
    return {
        "data_identifier": "benchmark", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": patch_size, "median_image_size_in_voxels": patch_size, "spacing": [1.0] * dims,
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities":
            "resample_data_or_seg_to_shape", "resampling_fn_probabilities_kwargs": {}, "batch_dice": True,
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n_stages,
                "features_per_stage": [min(32 * 2 ** i, max_features) for i in range(n_stages)],
                "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
                "kernel_sizes": [[3] * dims] * n_stages,
                "strides": [[1] * dims] + [[2] * dims] * (n_stages - 1),
                "n_conv_per_stage": [2] * n_stages,
                "n_conv_per_stage_decoder": [2] * (n_stages - 1),
                "conv_bias": True,
                "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
    }


# name: (configuration, the DCA trainer)
CONFIGS = {
    "2d_256": (ct_configuration([256, 256], 7, 512), nnUNetTrainerDCA),
    "2d_512": (ct_configuration([512, 512], 8, 512), nnUNetTrainerDCA),
    "2d_512_fullgrid": (ct_configuration([512, 512], 8, 512), nnUNetTrainerDCA_FullGrid),
    "3d_128": (ct_configuration([128, 128, 128], 6, 320), nnUNetTrainerDCA),
}


def plans_with(config: str) -> dict:
    """A plans dict holding one benchmark configuration, as nnU-Net writes plans.json."""
    return {"dataset_name": "Dataset999_Benchmark", "plans_name": "nnUNetPlans", "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2], "image_reader_writer": "SimpleITKIO",
            "label_manager": "LabelManager", "configurations": {config: CONFIGS[config][0]}}
