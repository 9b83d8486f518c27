"""How trainers learn over independent short runs: nnU-Net's own training loop, real data, median and worst run.

Each run is nnUNetTrainer.run_training as nnUNetv2_train runs it (nnU-Net's dataloader and augmentation, SGD with
lr 0.01, momentum 0.99, nesterov and poly decay over the run, deep supervision; checkpoints off), in epochs of
--every iterations. After each epoch nnU-Net's validation step over --val-iterations batches of validation cases
gives the validation loss and the pseudo Dice (its mean over labels); the training loss is the epoch's mean.
Run r of every trainer starts from seed + r: the U-Net's own weights are the same for every trainer (DCA's are drawn
after them) and, with --workers 0 (augmentation in this process), so is every batch.

    python benchmarks/training_dynamics.py -d msd-hippocampus -c 2d --batch-size 32 --iterations 600 --every 60 \\
        --val-iterations 20 --runs 5 --trainers nnUNetTrainer nnUNetTrainerDCA nnUNetTrainerDCA_Paper \\
        --out dynamics_hippocampus

-d is a dataset in your nnUNet_preprocessed (id or name), or msd-hippocampus / isbi2012-em, the real data in
../shared/data, converted and preprocessed into OUT on first use. Prints, per mark and trainer, the median, worst and
best over the runs, the time per iteration, and the first trainer's targets for the others; writes every curve to
OUT/curves.json after each run (a rerun with the same settings continues from there), OUT/curves.png and, for DCA
trainers, OUT/attention.png: the attention statistics (nnunet_dca.attention.statistics) of --attention-cases
validation cases, a patch each, at every mark.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from measure import environment, print_table
from nnunet_training import attention_summary, new_trainer, set_up_folders, validation_probe

CURVES = ("train_loss", "val_loss", "pseudo_dice")
LABELS = {"train_loss": "training loss", "val_loss": "validation loss", "pseudo_dice": "pseudo Dice"}
LOWER_IS_BETTER = {"train_loss": True, "val_loss": True, "pseudo_dice": False}
# the targets of a new trainer against the baseline (the first trainer): no worse within these margins
DICE_MEDIAN_MARGIN, DICE_WORST_MARGIN, VAL_LOSS_MARGIN = 0.01, 0.02, 0.01


def train_once(trainer_name: str, dataset: str, args: argparse.Namespace, seed: int) -> dict:
    """One run: the curves at every mark, and its times."""
    trainer = new_trainer(trainer_name, dataset, args.configuration, args.fold, args.batch_size, args.device, seed)
    trainer.num_epochs = args.iterations // args.every
    trainer.num_iterations_per_epoch = args.every
    trainer.num_val_iterations_per_epoch = args.val_iterations
    trainer.disable_checkpointing = True
    step_seconds = []
    train_step = trainer.train_step

    def timed_train_step(batch: dict) -> dict:  # this trainer only: nnU-Net's class stays as it is
        start = time.perf_counter()
        result = train_step(batch)
        step_seconds.append(time.perf_counter() - start)
        return result

    trainer.train_step = timed_train_step
    attention = []
    if hasattr(trainer.network, "dca") and args.attention_cases:
        probe = validation_probe(trainer, args.attention_cases)
        on_epoch_end = trainer.on_epoch_end

        def on_epoch_end_with_attention() -> None:  # at each mark, after the epoch's validation
            attention.append(attention_summary(trainer.network, probe))
            on_epoch_end()

        trainer.on_epoch_end = on_epoch_end_with_attention
    start = time.perf_counter()
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        trainer.run_training()
    seconds = time.perf_counter() - start
    log = trainer.logger
    shutil.rmtree(trainer.output_folder_base)
    return {
        "seed": seed,
        "iteration": [args.every * (epoch + 1) for epoch in range(trainer.num_epochs)],
        "train_loss": [float(v) for v in log.get_value("train_losses", None)],
        "val_loss": [float(v) for v in log.get_value("val_losses", None)],
        "pseudo_dice": [float(v) for v in log.get_value("mean_fg_dice", None)],
        "dice_per_label": [[float(d) for d in v] for v in log.get_value("dice_per_class_or_region", None)],
        "attention": attention,
        "train_step_seconds": statistics.median(step_seconds),
        "seconds_per_iteration": seconds / args.iterations,
    }


def spread(runs: list[dict], curve: str, mark: int) -> tuple[float, float, float]:
    """(median, worst, best) of one curve at one mark over the runs."""
    values = [run[curve][mark] for run in runs]
    worst, best = (max, min) if LOWER_IS_BETTER[curve] else (min, max)
    return statistics.median(values), worst(values), best(values)


def cell(values: tuple[float, float, float]) -> str:
    return "{:.3f} ({:.3f}, {:.3f})".format(*values)


def print_tables(results: dict[str, list[dict]], args: argparse.Namespace, where: str) -> None:
    """The tables; `where`: the environment the runs trained in."""
    n_marks = args.iterations // args.every
    marks = sorted({m for m in range(n_marks) if (m + 1) % args.print_every == 0} | {n_marks - 1})
    rows = [f"| {args.every * (mark + 1)} | {name} | {len(runs)} | "
            + " | ".join(cell(spread(runs, curve, mark)) for curve in CURVES) + " |"
            for mark in marks for name, runs in results.items() if runs]
    print_table(f"Training dynamics, {args.dataset} {args.configuration} fold {args.fold}, batch "
                f"{args.batch_size or 'of the plans'}: median (worst, best) over the runs; trained on {where}",
                ["iteration", "trainer", "runs", "train loss", "validation loss", "pseudo Dice"], rows)
    print()
    print_table("Time per iteration (median over runs): nnU-Net's train_step, and the whole run (data, "
                "augmentation, validation) divided by its iterations",
                ["trainer", "train_step (s)", "whole run per iteration (s)"],
                [f"| {name} | {statistics.median(r['train_step_seconds'] for r in runs):.3f} | "
                 f"{statistics.median(r['seconds_per_iteration'] for r in runs):.3f} |"
                 for name, runs in results.items() if runs])
    baseline, *others = results
    others = [name for name in others if results[name] and results[baseline]]
    if others:
        print()
        columns = [(name, curve) for name in others for curve in ("val_loss", "pseudo_dice")]
        print_table(f"Paired by seed (the same U-Net weights at the start, the same batches with --workers 0): "
                    f"trainer - {baseline}, median [smallest, largest] over the pairs",
                    ["iteration", *(f"{name}: {LABELS[curve]}" for name, curve in columns)],
                    [f"| {iteration} | " + " | ".join(paired(results[name], results[baseline], curve, mark)
                                                      for name, curve in columns) + " |"
                     for mark, iteration in enumerate(results[baseline][0]["iteration"])])
    for name in others:
        print()
        print("\n".join(target_lines(results[name], results[baseline], name, baseline)))
    attention_rows = [f"| {args.every * (mark + 1)} | {name} | " + " | ".join(attention_cells(runs, mark)) + " |"
                      for mark in marks for name, runs in results.items() if runs and runs[0].get("attention")]
    if attention_rows:
        print()
        print_table(f"DCA's attention on the first {args.attention_cases} validation cases (all, where there are "
                    "fewer; a patch each, evaluation mode), "
                    "first block, per stage 0 / 1 / ...: median over the runs",
                    ["iteration", "trainer", "channel: rows with largest p > 0.5", "channel: median effective "
                     "channels [C_sum]", "spatial: mean entropy / ln N", "spatial: mean largest p x N [N]",
                     "spatial, foreground queries: mean entropy / ln N"], attention_rows)


def target_lines(runs: list[dict], baseline_runs: list[dict], name: str, baseline: str) -> list[str]:
    """The targets of `name` against `baseline`, one line each, met or not, with the numbers."""
    last_two = range(len(runs[0]["iteration"]) - 2, len(runs[0]["iteration"]))
    lines = [f"{name} against {baseline}:"]
    medians = [(spread(runs, "pseudo_dice", m)[0], spread(baseline_runs, "pseudo_dice", m)[0]) for m in last_two]
    met = all(ours >= theirs - DICE_MEDIAN_MARGIN for ours, theirs in medians)
    lines.append(f"- median pseudo Dice at the last two marks >= baseline's - {DICE_MEDIAN_MARGIN}: "
                 f"{'met' if met else 'NOT met'} ({'; '.join(f'{a:.3f} vs {b:.3f}' for a, b in medians)})")
    worsts = [(spread(runs, "pseudo_dice", m)[1], spread(baseline_runs, "pseudo_dice", m)[1]) for m in last_two]
    met = all(ours >= theirs - DICE_WORST_MARGIN for ours, theirs in worsts)
    lines.append(f"- worst run's pseudo Dice at the last two marks >= baseline's worst - {DICE_WORST_MARGIN}: "
                 f"{'met' if met else 'NOT met'} ({'; '.join(f'{a:.3f} vs {b:.3f}' for a, b in worsts)})")
    over = [(runs[0]["iteration"][m], spread(runs, "val_loss", m)[0], spread(baseline_runs, "val_loss", m)[0])
            for m in range(len(runs[0]["iteration"]))]
    missed = [f"{it}: {a:.3f} vs {b:.3f}" for it, a, b in over if a > b + VAL_LOSS_MARGIN]
    lines.append(f"- median validation loss at every mark <= baseline's + {VAL_LOSS_MARGIN}: "
                 + ("met" if not missed else f"NOT met at {'; '.join(missed)}"))
    return lines


def attention_cells(runs: list[dict], mark: int) -> list[str]:
    """The attention statistics at one mark, per stage, median over the runs (first block)."""
    def per_stage(pick, spec: str = ".2f") -> str:
        stages = range(len(runs[0]["attention"][mark]))
        values = [statistics.median(pick(run["attention"][mark][stage]["blocks"][0]) for run in runs)
                  for stage in stages]
        return " / ".join(format(v, spec) for v in values)

    first = runs[0]["attention"][mark][0]["blocks"][0]
    cells = []
    if "channel" in first:
        cells += [per_stage(lambda b: b["channel"]["collapsed_share"]),
                  per_stage(lambda b: b["channel"]["effective"]["median"], ".1f")
                  + f" [{first['channel']['context_channels']}]"]
    else:
        cells += ["off", "off"]
    if "spatial" in first:
        cells += [per_stage(lambda b: b["spatial"]["entropy_ratio"]["mean"], ".3f"),
                  per_stage(lambda b: b["spatial"]["max_times_n"]["mean"]) + f" [{first['spatial']['tokens']}]",
                  per_stage(lambda b: (b["spatial_foreground"] or b["spatial"])["entropy_ratio"]["mean"], ".3f")]
    else:
        cells += ["off", "off", "off"]
    return cells


def paired(runs: list[dict], baseline_runs: list[dict], curve: str, mark: int) -> str:
    """The per-seed differences (run - the baseline's run of the same seed) of one curve at one mark: median
    [smallest, largest], as text."""
    baseline = {run["seed"]: run[curve][mark] for run in baseline_runs}
    differences = [run[curve][mark] - baseline[run["seed"]] for run in runs if run["seed"] in baseline]
    return f"{statistics.median(differences):+.3f} [{min(differences):+.3f}, {max(differences):+.3f}]"


def plot(results: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # matplotlib's own look: nnU-Net's import switches seaborn's large fonts on
    with matplotlib.rc_context(matplotlib.rcParamsDefault):
        figure, axes = plt.subplots(1, len(CURVES), figsize=(15, 4.5), constrained_layout=True)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for (name, runs), colour in zip(results.items(), colours):
            for ax, curve in zip(axes, CURVES):
                iterations = runs[0]["iteration"] if runs else []
                for run in runs:
                    ax.plot(iterations, run[curve], color=colour, alpha=0.3, linewidth=1)
                if runs:
                    ax.plot(iterations, np.median([run[curve] for run in runs], axis=0), color=colour,
                            linewidth=2.5, label=f"{name}: median of {len(runs)} runs (thin: each run)")
        for ax, curve in zip(axes, CURVES):
            ax.set_xlabel("iteration")
            ax.set_title(LABELS[curve])
            ax.grid(alpha=0.3)
        figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=9)
        figure.suptitle(title)
        figure.savefig(path, dpi=100)
        plt.close(figure)


ATTENTION_PANELS = [  # (title, pick from a block's summary, log scale)
    ("channel: rows with largest p > 0.5", lambda b: b["channel"]["collapsed_share"], False),
    ("channel: median effective channels", lambda b: b["channel"]["effective"]["median"], True),
    ("spatial: mean entropy / ln N", lambda b: b["spatial"]["entropy_ratio"]["mean"], False),
    ("spatial: mean largest p x N", lambda b: b["spatial"]["max_times_n"]["mean"], True),
]


def plot_attention(results: dict[str, list[dict]], path: Path, title: str) -> bool:
    """The attention statistics over the marks, per trainer (colour) and stage (line style), median over the runs;
    False if no trainer recorded them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recorded = {name: runs for name, runs in results.items() if runs and runs[0].get("attention")}
    if not recorded:
        return False
    with matplotlib.rc_context(matplotlib.rcParamsDefault):
        figure, axes = plt.subplots(1, len(ATTENTION_PANELS), figsize=(20, 4.5), constrained_layout=True)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for (name, runs), colour in zip(recorded.items(), colours):
            iterations = runs[0]["iteration"]
            for stage, style in zip(range(len(runs[0]["attention"][0])), ("-", "--", ":", "-.")):
                for ax, (_, pick, _) in zip(axes, ATTENTION_PANELS):
                    try:
                        values = [statistics.median(pick(run["attention"][mark][stage]["blocks"][0]) for run in runs)
                                  for mark in range(len(iterations))]
                    except KeyError:  # that attention is off
                        continue
                    ax.plot(iterations, values, color=colour, linestyle=style,
                            label=f"{name}, stage {stage}")
        for ax, (panel, _, log) in zip(axes, ATTENTION_PANELS):
            ax.set_xlabel("iteration")
            ax.set_title(panel)
            ax.grid(alpha=0.3)
            if log:
                ax.set_yscale("log")
        figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=4, fontsize=8)
        figure.suptitle(title)
        figure.savefig(path, dpi=100)
        plt.close(figure)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", dest="dataset", required=True,
                        help="a dataset id or name in nnUNet_preprocessed, or msd-hippocampus / isbi2012-em")
    parser.add_argument("-c", dest="configuration", default="2d")
    parser.add_argument("--trainers", nargs="+",
                        default=["nnUNetTrainer", "nnUNetTrainerDCA", "nnUNetTrainerDCA_Paper"],
                        help="trainer names as nnUNetv2_train -tr takes them; the first is the baseline")
    parser.add_argument("--runs", type=int, default=5, help="independent runs per trainer (default 5)")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--every", type=int, default=30, help="iterations per epoch: a mark every so many")
    parser.add_argument("--val-iterations", type=int, default=10, help="validation batches per mark (default 10)")
    parser.add_argument("--print-every", type=int, default=2, help="print every so many marks, and the last")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the plans'")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="run r starts from seed + r")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--attention-cases", type=int, default=20,
                        help="validation cases whose DCA attention statistics are taken at each mark (0: none)")
    parser.add_argument("--workers", type=int, default=0, help="nnUNet_n_proc_DA; 0 (default) pairs the batches")
    parser.add_argument("--out", type=Path, default=Path("training_dynamics"))
    args = parser.parse_args()
    if args.iterations % args.every:
        parser.error(f"--iterations {args.iterations} is not a multiple of --every {args.every}")

    args.out.mkdir(parents=True, exist_ok=True)
    dataset = set_up_folders(args.dataset, args.configuration, args.out.resolve(), args.workers)
    # the run count and the trainers may grow between invocations; everything else must stay
    settings = {key: value for key, value in vars(args).items()
                if key not in ("out", "print_every", "trainers", "runs")}
    curves_file = args.out / "curves.json"
    saved_runs = {}
    # what this invocation trains on, or, where every run was trained before, what the last of them trained on
    where = environment(args.device)
    if curves_file.is_file():
        saved = json.loads(curves_file.read_text())
        if saved["settings"] != settings:
            sys.exit(f"{curves_file} holds runs of other settings ({saved['settings']}); use another --out")
        saved_runs, where = saved["runs"], saved.get("environment", where)
    results = {name: saved_runs.get(name, []) for name in args.trainers}
    for run in range(args.runs):
        for name in args.trainers:
            if len(results[name]) > run:  # done in an earlier invocation
                continue
            result = train_once(name, dataset, args, args.seed + run)
            where = environment(args.device)
            results[name].append(result)
            print(f"{name} run {run + 1}/{args.runs}: pseudo Dice {result['pseudo_dice'][-1]:.3f}, validation loss "
                  f"{result['val_loss'][-1]:.3f} at iteration {args.iterations}, "
                  f"{result['seconds_per_iteration']:.2f} s per iteration", flush=True)
            curves_file.write_text(json.dumps({"settings": settings, "environment": environment(args.device),
                                               "runs": {**saved_runs, **results}}, indent=1))
    results = {name: runs[:args.runs] for name, runs in results.items()}
    print()
    print_tables(results, args, where)
    plot(results, args.out / "curves.png", f"{dataset} {args.configuration}, batch {args.batch_size or 'of the plans'}"
                                           f", {args.runs} runs per trainer")
    figures = f"{args.out / 'curves.png'}"
    title = (f"DCA's attention on up to {args.attention_cases} validation cases of {dataset} {args.configuration}, "
             "median of the runs")
    if plot_attention(results, args.out / "attention.png", title):
        figures += f" and {args.out / 'attention.png'}"
    print(f"\ncurves: {curves_file}, figures: {figures}")


if __name__ == "__main__":
    main()
