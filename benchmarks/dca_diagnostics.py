"""DCA inside nnU-Net's training, per stage, at initialization and over the first iterations, on real data.

Each trainer is set up as nnUNetv2_train sets it up and trains with nnU-Net's own train_step (SGD, lr 0.01, momentum
0.99). At each mark, on one fixed batch of validation patches, in training mode (on a copy, so no running statistic
moves), per stage DCA refines:
- branch / skip: the rms of the branch DCA adds (the refined tokens' 1x1 conv, at the skip's size) over the skip's;
- refined <= 0: the share of the refined skip at or below zero (the paper's ReLU zeroes it), beside the stock
  skip's own share (after the encoder's LeakyReLU);
- channel attention (nnunet_dca.attention.statistics, first block): the share of rows collapsed onto one channel
  (largest probability above 0.5) and the median effective number of attended channels, exp(entropy), against
  C_sum; spatial attention: the mean entropy over ln N (1 is uniform, 0 one-hot) and the mean largest probability
  times N (1 is uniform);
- update / weight: ||change|| / ||weights|| of the stage's DCA parameters in the optimizer step taken there;
and for the network, how far its logits are from those of the stock U-Net with the same encoder and decoder
weights (max |difference| over the stock logits' range), in training and evaluation mode.

    python benchmarks/dca_diagnostics.py -d msd-hippocampus -c 2d --batch-size 32 --iterations 20
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from measure import environment, print_table
from nnunet_training import new_trainer, set_up_folders

if TYPE_CHECKING:
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

STAGE_LISTS = ("patch_embeddings", "output_convs", "output_norms")  # per-stage lists directly under DCA


def dca_stage(parameter_name: str) -> int | None:
    """The skip a parameter of a DCA U-Net serves ('dca.blocks.0.channel_attentions.2.query.weight' -> 2); None
    outside DCA."""
    parts = parameter_name.split(".")
    if parts[0] != "dca":
        return None
    return int(parts[2] if parts[1] in STAGE_LISTS else parts[4])  # blocks.<block>.<list>.<stage>


def update_over_weight(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """||after - before|| / ||before|| over (parameter after the step, its copy before) pairs."""
    change = sum((after.detach() - before).square().sum().item() for after, before in pairs)
    return math.sqrt(change / sum(before.square().sum().item() for _, before in pairs))


def number(value: float | str, spec: str) -> str:
    return value if isinstance(value, str) else format(value, spec)


def rms(tensor: torch.Tensor) -> float:
    return tensor.float().square().mean().sqrt().item()


def probe(network: torch.nn.Module, data: torch.Tensor) -> tuple[list[dict], dict]:
    """Per-stage statistics, and the logits' distance from the stock U-Net's, of `network` on `data`."""
    import torch

    from nnunet_dca.attention.statistics import attention_rows, summarize
    from nnunet_dca.recording import DCARecorder

    copied = copy.deepcopy(network).eval()
    with torch.no_grad():
        logits, stock = {"eval": copied(data)[0]}, {"eval": copied.decoder(copied.encoder(data))[0]}
        copied.train()
        with DCARecorder(copied.dca) as recorder:
            logits["train"] = copied(data)[0]
        stock["train"] = copied.decoder(copied.encoder(data))[0]
    attention = summarize([attention_rows(recorder.stages)])
    stages = []
    for record, statistics in zip(recorder.stages, attention):
        row = {"branch_over_skip": rms(record.branch) / rms(record.skip),
               "refined_nonpositive": (record.refined <= 0).float().mean().item(),
               "skip_nonpositive": (record.skip <= 0).float().mean().item(), **statistics["blocks"][0]}
        stages.append(row)
    distance = {mode: ((logits[mode] - stock[mode]).abs().max() / (stock[mode].max() - stock[mode].min())).item()
                for mode in logits}
    return stages, distance


def diagnose(trainer: nnUNetTrainer, marks: list[int], iterations: int) -> tuple[list[str], list[str]]:
    trainer.disable_checkpointing = True
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    network = trainer.network
    data = next(trainer.dataloader_val)["data"].to(trainer.device)
    # the stage each parameter serves, -1 for the U-Net's own (a reference for the ratios)
    parameters = [(-1 if dca_stage(name) is None else dca_stage(name), p) for name, p in network.named_parameters()]
    groups = [*range(len(network.dca.features)), -1]
    stage_rows, network_rows = [], []
    name = type(trainer).__name__
    for iteration in range(iterations + 1):
        measure = iteration in marks
        if measure:
            stages, distance = probe(network, data)
        if iteration == iterations:  # no step is taken at the last mark
            ratios, loss = {group: "-" for group in groups}, "-"
        else:
            before = [p.detach().clone() for _, p in parameters]
            loss = float(trainer.train_step(next(trainer.dataloader_train))["loss"])
            ratios = {group: update_over_weight([(p, b) for (g, p), b in zip(parameters, before) if g == group])
                      for group in groups}
        if measure:
            for stage, row in enumerate(stages):
                cells = [f"{row['branch_over_skip']:.3f}", f"{row['refined_nonpositive']:.2f} "
                         f"({row['skip_nonpositive']:.2f})"]
                channel, spatial = row.get("channel"), row.get("spatial")
                cells.append(f"{channel['collapsed_share']:.2f} / {channel['effective']['median']:.1f} "
                             f"[{channel['context_channels']}]" if channel else "off")
                cells.append(f"{spatial['entropy_ratio']['mean']:.3f} / {spatial['max_times_n']['mean']:.2f} "
                             f"[{spatial['tokens']}]" if spatial else "off")
                cells.append(number(ratios[stage], ".2e"))
                stage_rows.append(f"| {name} | {iteration} | {stage} | " + " | ".join(cells) + " |")
            network_rows.append(f"| {name} | {iteration} | {distance['train']:.4f} | {distance['eval']:.4f} | "
                                f"{number(ratios[-1], '.2e')} | {number(loss, '.4f')} |")
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        trainer.on_train_end()
    return stage_rows, network_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", dest="dataset", required=True,
                        help="a dataset id or name in nnUNet_preprocessed, or msd-hippocampus / isbi2012-em")
    parser.add_argument("-c", dest="configuration", default="2d")
    parser.add_argument("--trainers", nargs="+", default=["nnUNetTrainerDCA", "nnUNetTrainerDCA_Paper"])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--marks", type=int, nargs="+", default=[0, 1, 2, 5, 10, 20])
    parser.add_argument("--batch-size", type=int, default=None, help="default: the plans'")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("dca_diagnostics"),
                        help="where real data is prepared and trainings write (removed after each)")
    args = parser.parse_args()
    if max(args.marks) > args.iterations:
        parser.error(f"marks {[m for m in args.marks if m > args.iterations]} lie after --iterations {args.iterations}")

    # the recorder's hooks and the parameter names per stage need the eager network (nnU-Net compiles on CUDA)
    os.environ["nnUNet_compile"] = "f"
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = set_up_folders(args.dataset, args.configuration, args.out.resolve(), workers=0)
    stage_rows, network_rows = [], []
    for name in args.trainers:
        trainer = new_trainer(name, dataset, args.configuration, args.fold, args.batch_size, args.device, args.seed)
        if not hasattr(trainer.network, "dca"):
            parser.error(f"{name} builds no DCA U-Net; name DCA trainers")
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            rows = diagnose(trainer, args.marks, args.iterations)
        shutil.rmtree(trainer.output_folder_base)
        stage_rows += rows[0]
        network_rows += rows[1]
    title = (f"{dataset} {args.configuration} fold {args.fold}, batch {args.batch_size or 'of the plans'}, seed "
             f"{args.seed}; {environment(args.device)}")
    print_table(f"DCA per stage, training mode, one fixed batch of validation patches; {title}",
                ["trainer", "iteration", "stage", "branch / skip (rms)", "refined <= 0 (stock skip)",
                 "channel attention: rows with largest p > 0.5 / median effective channels [C_sum]",
                 "spatial attention: mean entropy over ln N / mean largest p x N [N]",
                 "update / weight (that step)"], stage_rows)
    print()
    print_table("Logits against the stock U-Net with the same encoder and decoder weights: max |difference| over "
                "the stock logits' range; the step taken there",
                ["trainer", "iteration", "train mode", "eval mode", "update / weight of the U-Net's own parameters",
                 "training loss"], network_rows)


if __name__ == "__main__":
    main()
