"""DCA's attention at initialization, before any step, for temperatures a trainer could start at: the statistics of
nnunet_dca.attention.statistics on a fixed batch of validation cases (a patch each, evaluation mode).

Training moves the temperatures little over the first hundreds of iterations (docs/dca.md), so where they start
decides much of what the attention does: this shows it without training. Every temperature of the trainer's
network is set to each value in turn (channel and spatial separately with --spatial-temperatures).

    python benchmarks/attention_at_init.py -d msd-hippocampus -c 2d --trainer nnUNetTrainerDCA_QKNorm \\
        --temperatures 1 2 3 4 6 --spatial-temperatures 1 2 2 2 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from measure import environment, print_table
from nnunet_training import attention_summary, new_trainer, set_up_folders, validation_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", dest="dataset", required=True,
                        help="a dataset id or name in nnUNet_preprocessed, or msd-hippocampus / isbi2012-em")
    parser.add_argument("-c", dest="configuration", default="2d")
    parser.add_argument("--trainer", default="nnUNetTrainerDCA_QKNorm", help="a DCA trainer with temperatures")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--spatial-temperatures", type=float, nargs="+", default=None,
                        help="spatial attention's, one per --temperatures value (default: the same)")
    parser.add_argument("--cases", type=int, default=20, help="validation cases, a patch each")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("attention_at_init"), help="where real data is prepared")
    args = parser.parse_args()
    spatial = args.spatial_temperatures or args.temperatures
    if len(spatial) != len(args.temperatures):
        parser.error("--spatial-temperatures takes one value per --temperatures value")

    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    dataset = set_up_folders(args.dataset, args.configuration, args.out.resolve(), workers=0)
    trainer = new_trainer(args.trainer, dataset, args.configuration, args.fold, None, args.device, args.seed)
    temperatures = {name: p for name, p in trainer.network.named_parameters() if name.endswith("temperature")}
    if not temperatures:
        parser.error(f"{args.trainer} has no temperatures (cosine or qk_norm scores)")
    probe = validation_probe(trainer, args.cases)
    rows = []
    for channel_temperature, spatial_temperature in zip(args.temperatures, spatial):
        with torch.no_grad():
            for name, parameter in temperatures.items():
                parameter.fill_(channel_temperature if "channel_attentions" in name else spatial_temperature)
        for stage in attention_summary(trainer.network, probe):
            block = stage["blocks"][0]
            channel, spatial_attention = block.get("channel"), block.get("spatial")
            rows.append(f"| {channel_temperature:g} / {spatial_temperature:g} | {stage['stage']} | "
                        + (f"{channel['collapsed_share']:.2f} | {channel['effective']['median']:.1f} "
                           f"[{channel['context_channels']}] | " if channel else "off | off | ")
                        + (f"{spatial_attention['entropy_ratio']['mean']:.3f} | "
                           f"{spatial_attention['max_times_n']['mean']:.2f} [{spatial_attention['tokens']}] | "
                           f"{spatial_attention['max_probability_mean']:.3f} |" if spatial_attention
                           else "off | off | off |"))
    print_table(f"{args.trainer} at initialization (seed {args.seed}), {len(probe[0])} validation cases of {dataset} "
                f"{args.configuration} fold {args.fold}, a patch each; {environment(args.device)}",
                ["temperature: channel / spatial", "stage", "channel: rows with largest p > 0.5",
                 "channel: median effective channels [C_sum]", "spatial: mean entropy / ln N",
                 "spatial: mean largest p x N [N]", "spatial: mean largest p"], rows)


if __name__ == "__main__":
    main()
