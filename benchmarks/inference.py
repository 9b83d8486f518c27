"""Sliding-window inference with nnU-Net's predictor: a stock model folder against a DCA model folder, same plans.

Both folders are written as nnUNetv2_train leaves them (plans.json, dataset.json, fold_0/checkpoint_final.pth with
random weights) and loaded by `nnUNetPredictor.initialize_from_trained_model_folder`, which finds
nnUNetTrainerDCA through nnUNet_extTrainer. One synthetic preprocessed volume; the two predictors alternate and the
table gives median times and the median of the per-pair ratios. Mirroring is off unless --mirroring (it multiplies
both times alike).

    python benchmarks/inference.py [--configs 2d_512 3d_128] [--repeats 3] [--device cpu|cuda] [--mirroring]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from ct_plans import CONFIGS, NUM_CLASSES, plans_with
from measure import synchronize
from nnunet_dca.trainers import trainer_dir

# a few slices or a few 3D tiles: enough for the sliding window to overlap tiles
VOLUMES = {"2d_256": (4, 256, 256), "2d_512": (4, 512, 512), "2d_512_fullgrid": (4, 512, 512),
           "3d_128": (128, 128, 160)}


def write_model_folder(folder: str, config: str, trainer: type) -> None:
    """A model folder as nnUNetv2_train writes it, with the trainer's network at its initial (random) weights."""
    plans = plans_with(config)
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **{f"organ{i}": i for i in
                                                                           range(1, NUM_CLASSES)}},
               "numTraining": 1, "file_ending": ".nii.gz"}
    plans_manager = PlansManager(plans)
    torch.manual_seed(0)
    network = trainer.build_network_architecture(plans_manager, plans_manager.get_configuration(config), 1,
                                                 NUM_CLASSES, False)
    os.makedirs(os.path.join(folder, "fold_0"))
    for name, content in (("plans.json", plans), ("dataset.json", dataset)):
        with open(os.path.join(folder, name), "w") as f:
            json.dump(content, f)
    dims = len(CONFIGS[config][0]["patch_size"])
    torch.save({"network_weights": network.state_dict(), "trainer_name": trainer.__name__,
                "init_args": {"configuration": config}, "inference_allowed_mirroring_axes": tuple(range(dims))},
               os.path.join(folder, "fold_0", "checkpoint_final.pth"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["2d_512", "3d_128"], choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--mirroring", action="store_true", help="test-time mirroring, as nnUNetv2_predict does")
    args = parser.parse_args()
    os.environ["nnUNet_extTrainer"] = os.pathsep.join(filter(None, [trainer_dir(),
                                                                    os.environ.get("nnUNet_extTrainer")]))
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for config in args.configs:
            predictors = {}
            for network, trainer in (("stock", nnUNetTrainer), ("dca", CONFIGS[config][1])):
                folder = os.path.join(workdir, f"{config}_{network}")
                write_model_folder(folder, config, trainer)
                predictor = nnUNetPredictor(use_mirroring=args.mirroring, device=torch.device(args.device),
                                            allow_tqdm=False)
                predictor.initialize_from_trained_model_folder(folder, use_folds=(0,))
                predictors[network] = predictor
            volume = torch.randn(1, *VOLUMES[config], generator=torch.Generator().manual_seed(0))
            times = {"stock": [], "dca": []}
            for repeat in range(args.repeats + 1):  # the first round warms up
                for network, predictor in predictors.items():
                    start = time.perf_counter()
                    with torch.no_grad():
                        predictor.predict_sliding_window_return_logits(volume)
                    synchronize(args.device)
                    if repeat:
                        times[network].append(time.perf_counter() - start)
            ratio = statistics.median(d / s for d, s in zip(times["dca"], times["stock"]))
            rows.append(f"| {config} | {'x'.join(map(str, VOLUMES[config]))} | "
                        f"{statistics.median(times['stock']):.2f} | {statistics.median(times['dca']):.2f} | "
                        f"{ratio:.3f} |")
    print(f"Sliding-window inference (nnUNetPredictor, step 0.5, gaussian, mirroring "
          f"{'on' if args.mirroring else 'off'}), median of {args.repeats} alternated runs; {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
    print("| config | volume | stock (s) | DCA (s) | time DCA / stock |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
