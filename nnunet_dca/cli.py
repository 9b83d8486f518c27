"""The `nnunet-dca` command: trainer-dir, doctor, add-config, warm-start, compare, attention and demo (and
train-fold, left out of --help, what each task of compare's SLURM job array runs).

Training, prediction and everything else stay nnU-Net's own commands (`nnUNetv2_*`); this command helps to set
them up, and compare runs nnUNetv2_train for the folds a comparison misses. User errors go to stderr as one line,
`nnunet-dca COMMAND: error: ...`, with exit code 2; failed doctor checks and failed trainings exit with 1, Ctrl-C
with 130 (as a shell reports SIGINT).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import NoReturn, Sequence

from nnunet_dca.compare import TRAIN_MODES
from nnunet_dca.config import CHANNEL_SCORES, DEFAULTS, MERGES, SPATIAL_SCORES
from nnunet_dca.demo import DEFAULT_ITERATIONS, DemoError, run_demo
from nnunet_dca.doctor import EXPORT_LINE, run_doctor
from nnunet_dca.trainers import ext_trainer_value, trainer_dir
from nnunet_dca.versions import version_report

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


class UsageError(Exception):
    """A mistake the user fixes by changing the command or the set-up; printed as one line, without a traceback."""


# what the library functions behind the commands raise for a mistake of the user or the set-up
USER_ERRORS = (RuntimeError, ValueError, OSError)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, with a mistake in the command line reported in one line that points to --help, not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class PrintVersions(argparse.Action):
    """--version: prints version_report() and exits (argparse's own version action would rewrap its lines)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args) -> NoReturn:
        print(version_report())
        parser.exit()


def cmd_trainer_dir(args: argparse.Namespace) -> int:
    print(ext_trainer_value(os.environ.get("nnUNet_extTrainer")) if args.export else trainer_dir())
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    return run_doctor()


# add-config

def _max_tokens(value: str) -> int | None:
    if value.lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'none' (uncapped), got {value!r}") from None


def _int_or_list(values: list[int]) -> int | list[int]:
    return values[0] if len(values) == 1 else values


def cmd_add_config(args: argparse.Namespace) -> int:
    # imported here: nnU-Net takes seconds to import, and the other commands need none of it
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_dca.plans import add_dca_configuration, find_plans_file

    # only the options given reach the block; add_dca_configuration fills in the defaults
    dca = {key: value for key, value in vars(args).items() if key in DEFAULTS}
    for key in ("token_grid", "channel_heads", "spatial_heads"):
        if key in dca:
            dca[key] = _int_or_list(dca[key])
    try:
        plans_file = find_plans_file(args.dataset, args.plans)
        name = add_dca_configuration(plans_file, args.configuration, args.name, dca, args.overwrite)
    except USER_ERRORS as e:
        raise UsageError(str(e)) from e
    written = json.loads(Path(plans_file).read_text())["configurations"][name]
    plans_option = _plans_option(args.plans)
    print(f"Added configuration '{name}' to {plans_file}:")
    print(f"  inherits '{args.configuration}' (its preprocessed data, no new preprocessing), "
          f"network {written['architecture']['network_class_name']}")
    print(f"  dca {json.dumps(written['architecture']['arch_kwargs']['dca'])}")
    previous_stage = PlansManager(plans_file).get_configuration(name).previous_stage_name
    if previous_stage is not None:
        # every fold's validation exports its cases, and the cascade trains on every case
        print(f"A cascade stage: all five folds of '{previous_stage}', trained with the same trainer, must export "
              f"their segmentations for '{name}' first. Train them, or rerun the validation of folds already trained:")
        print(f"  for fold in 0 1 2 3 4; do "
              f"nnUNetv2_train {args.dataset} {previous_stage} $fold{plans_option} --val; done")
    print("Train it with the stock trainer (no nnUNet_extTrainer needed):")
    print(f"  nnUNetv2_train {args.dataset} {name} 0{plans_option}")
    return 0


def _plans_option(plans_identifier: str) -> str:
    """The -p option of nnUNetv2_train for these plans: nothing for nnU-Net's default."""
    return "" if plans_identifier == "nnUNetPlans" else f" -p {plans_identifier}"


def cmd_warm_start(args: argparse.Namespace) -> int:
    # imported here: nnU-Net and torch take seconds to import, and the other commands need none of it
    from nnunet_dca.warm_start import DCA_PREFIX, warm_start

    try:
        weights = warm_start(args.checkpoint, args.dataset, args.configuration, args.output, args.trainer, args.plans,
                             args.overwrite)
    except USER_ERRORS as e:
        raise UsageError(str(e)) from e
    dca_count = sum(key.startswith(DCA_PREFIX) for key in weights)
    print(f"Wrote {args.output}: the {len(weights) - dca_count} tensors of {args.checkpoint}, and {dca_count} of "
          f"DCA, freshly initialized as {args.trainer} builds configuration '{args.configuration}'.")
    print("Fine-tune from it with nnU-Net's own command:")
    print(f"  nnUNetv2_train {args.dataset} {args.configuration} 0 -tr {args.trainer}{_plans_option(args.plans)} "
          f"-pretrained_weights {args.output}")
    return 0


# compare

def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def _fold(value: str) -> int:
    if value == "all":
        raise argparse.ArgumentTypeError("fold 'all' trains on every case and has no held-out validation to "
                                         "compare: give fold numbers, e.g. --folds 0 1 2 3 4")
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fold number, e.g. 0, got {value!r}") from None


GPU_SBATCH_OPTIONS = ("--gres", "--gpus", "--gpus-per-node", "--gpus-per-task", "--gpus-per-socket")


def _requests_gpus(sbatch_args: list[str]) -> bool:
    """Whether one of the --sbatch-arg lines asks for GPUs (--gres, --gpus, --gpus-per-node, --gpus-per-task,
    --gpus-per-socket or -G, with a value), as --gres would."""
    for line in sbatch_args:
        tokens = line.split()
        if not tokens:
            continue
        name, equals, value = tokens[0].partition("=")
        value = value if equals else " ".join(tokens[1:])
        if name in GPU_SBATCH_OPTIONS and value.strip().lower() not in ("", "none"):
            return True
        if name.startswith("-G") and not name.startswith("--") and (name[2:] or value.strip()):  # -G 1, -G1, -G=1
            return True
    return False


def cmd_compare(args: argparse.Namespace) -> int:
    # imported here: nnU-Net, torch, scipy and matplotlib take seconds to import, and the other commands need none
    from nnunet_dca.compare.slurm import SlurmOptions
    from nnunet_dca.compare.workflow import compare

    for option, given, mode in (("--gpus", args.gpus, "local"), ("--partition", args.partition, "slurm"),
                                ("--gres", args.gres, "slurm"), ("--time", args.time, "slurm"),
                                ("--array-limit", args.array_limit, "slurm"),
                                ("--sbatch-arg", args.sbatch_args, "slurm"), ("--dry-run", args.dry_run, "slurm")):
        if given and args.train != mode:
            raise UsageError(f"{option} applies to --train {mode} only, and this is --train {args.train}: add "
                             f"--train {mode}, or leave {option} out")
    if args.gpus and args.device != "cuda":
        raise UsageError(f"--gpus picks CUDA GPUs, and this is -device {args.device}: leave --gpus out to train on "
                         f"{args.device}, or use -device cuda")
    gres = args.gres.strip() if args.gres else None  # --gres "" (an empty variable in a script, say): no --gres
    if args.train == "slurm" and args.device == "cuda" and not gres and not _requests_gpus(args.sbatch_args):
        # without a --gres line, most clusters start the task with no GPU, and nnUNetv2_train fails in every task
        raise UsageError("--train slurm with -device cuda needs a GPU per task: add --gres gpu:1 (or --gres none "
                         "where the cluster hands out GPUs another way, e.g. by partition), or use -device cpu")
    gres = None if not gres or gres.lower() == "none" else gres  # none: no --gres line
    slurm = SlurmOptions(args.partition, gres, args.time, args.array_limit, args.sbatch_args)
    try:
        failed = compare(args.datasets, args.configurations, args.trainers, args.folds, args.plans, Path(args.out),
                         args.train, args.device, args.gpus, slurm, args.dry_run, args.command_line)
    except USER_ERRORS as e:
        raise UsageError(str(e)) from e
    return 1 if failed else 0


def cmd_train_fold(args: argparse.Namespace) -> int:
    from nnunet_dca.compare.slurm import train_fold
    from nnunet_dca.compare.study import Run
    from nnunet_dca.folders import folder_from_environment

    try:
        run = Run(folder_from_environment("nnUNet_results"), args.dataset, args.configuration, args.trainer,
                  args.plans, args.fold)
        return train_fold(run, args.device)
    except USER_ERRORS as e:
        raise UsageError(str(e)) from e


def cmd_attention(args: argparse.Namespace) -> int:
    # imported here: nnU-Net, torch and matplotlib take seconds to import, and the other commands need none of it
    from nnunet_dca.attention import Request, run_attention
    from nnunet_dca.attention.run import PICTURES, SUMMARY, WRITTEN

    request = Request(args.dataset, args.configuration, args.trainer, args.plans, args.fold, args.checkpoint,
                      args.images, Path(args.out), args.query, args.query_label, args.label, args.device,
                      args.overwrite)
    try:
        result = run_attention(request)
    except USER_ERRORS as e:
        raise UsageError(str(e)) from e
    looked_for = f"label {args.query_label}" if args.query_label is not None else "foreground"
    for case, attention in zip(result.summary["cases"], result.cases):
        query = attention["query"]
        where = (f"image voxel {query['image_voxel']} (Z Y X; from {query['from']}), token {query['token']} of the "
                 f"{'x'.join(map(str, attention['token_grid']))} grid")
        if case["foreground"]:
            print(f"{case['name']}: query at {where}")
        else:
            print(f"the model predicts no {looked_for} in {case['name']}; query at {where}, statistics over every "
                  f"token")
    cases = result.summary["cases"]
    print(f"Attention over every row of {len(cases)} case(s):")
    for stage in result.summary["statistics"]:
        for block in stage["blocks"]:
            name = f"stage {stage['stage']}" + (f" block {block['block']}" if len(stage["blocks"]) > 1 else "")
            parts = []
            if "channel" in block:
                channel = block["channel"]
                parts.append(f"channel attention {channel['collapsed_share']:.0%} of {channel['rows']} rows "
                             f"collapsed, median {channel['effective']['median']:.1f} effective channels of "
                             f"{channel['context_channels']}")
            if "spatial" in block:
                parts.append(f"spatial attention entropy / ln N {block['spatial']['entropy_ratio']['mean']:.3f}")
            print(f"  {name}: {'; '.join(parts) or 'no attention'}")
    written = f"{', '.join(PICTURES.values())}, {WRITTEN[0]} and {WRITTEN[1]}"
    if len(cases) == 1:
        print(f"Wrote {written} to {args.out}")
    else:
        print(f"Wrote {written} of each case to {Path(args.out) / 'CASE'} "
              f"({', '.join(case['name'] for case in cases)})")
    print(f"Wrote {' and '.join(SUMMARY)} to {args.out}")
    return 0


def _fold_or_all(value: str) -> str:
    if value != "all" and not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a fold number (e.g. 0) or 'all', got {value!r}")
    return value


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        run_demo(Path(args.out), args.device, args.iterations)
    except DemoError as e:
        raise UsageError(str(e)) from e
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(  # add_subparsers makes each command's parser of the same class
        prog="nnunet-dca", description="Dual Cross-Attention skip connections for nnU-Net v2: set-up helpers.")
    parser.add_argument("--version", action=PrintVersions,
                        help="print the versions of nnunet-dca, nnU-Net, torch and Python, and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    trainer_dir_parser = commands.add_parser(
        "trainer-dir", help="print the folder to put on nnUNet_extTrainer",
        description=f"Print the folder holding nnUNetTrainerDCA and its variants. Set it up with: {EXPORT_LINE}")
    trainer_dir_parser.add_argument(
        "--export", action="store_true",
        help="print the whole nnUNet_extTrainer value: this folder first, then the folders already set")
    trainer_dir_parser.set_defaults(func=cmd_trainer_dir)

    commands.add_parser(
        "doctor", help="check the nnU-Net set-up (version, paths, trainer discovery, allocator)",
        description="Check nnunetv2's version, nnUNet_raw/_preprocessed/_results, nnUNet_extTrainer and that "
                    "nnU-Net's own finder loads nnUNetTrainerDCA. Exits with 1 if a check fails. Then name the "
                    "memory allocator: on the CPU under glibc malloc, a hint with the line that preloads tcmalloc "
                    "(never a failure).",
    ).set_defaults(func=cmd_doctor)

    add_config = commands.add_parser(
        "add-config", help="add a DCA configuration to a plans file (the plans-only route)",
        description="Add a configuration to DATASET's plans that inherits from -c (same preprocessed data) and "
                    "builds the DCA U-Net, so the stock nnUNetTrainer trains DCA. Existing configurations are "
                    "never changed, except that a cascade source's previous stage (3d_lowres) gets the new name in "
                    "its next_stage (and loses it again when --overwrite gives the name a source without that previous "
                    "stage). DCA options left out keep the paper's defaults.")
    add_config.add_argument("dataset", metavar="DATASET", help="dataset id or name, e.g. 4 or Dataset004_Hippocampus")
    add_config.add_argument("-c", dest="configuration", default="2d", help="source configuration (default: 2d)")
    add_config.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    add_config.add_argument("--name", default=None, help="name of the new configuration (default: SOURCE_dca)")
    add_config.add_argument("--overwrite", action="store_true",
                            help="replace a configuration of the same name that add-config made (never another), "
                                 "unchanged if a fold of it is trained in nnUNet_results")
    dca = add_config.add_argument_group("DCA settings (the plans' dca block)")
    # SUPPRESS: an option left out does not appear in the namespace, so the block holds only what was asked
    dca.add_argument("--stages", type=int, default=argparse.SUPPRESS,
                     help=f"encoder skips DCA refines (default {DEFAULTS['stages']}, fewer if the network has fewer)")
    dca.add_argument("--token-grid", dest="token_grid", type=int, nargs="+", default=argparse.SUPPRESS,
                     help="token grid: one size for every axis or one per axis (default: the paper's rule)")
    dca.add_argument("--max-tokens", dest="max_tokens", type=_max_tokens, default=argparse.SUPPRESS,
                     help=f"cap on the number of tokens, or 'none' (default {DEFAULTS['max_tokens']})")
    dca.add_argument("--n-blocks", dest="n_blocks", type=int, default=argparse.SUPPRESS,
                     help=f"DCA blocks (default {DEFAULTS['n_blocks']})")
    dca.add_argument("--channel-heads", dest="channel_heads", type=int, nargs="+", default=argparse.SUPPRESS,
                     help=f"channel attention heads, one value or one per stage (default {DEFAULTS['channel_heads']})")
    dca.add_argument("--spatial-heads", dest="spatial_heads", type=int, nargs="+", default=argparse.SUPPRESS,
                     help=f"spatial attention heads, one value or one per stage (default {DEFAULTS['spatial_heads']})")
    dca.add_argument("--no-channel-attention", dest="channel_attention", action="store_false",
                     default=argparse.SUPPRESS, help="ablation: spatial cross-attention only")
    dca.add_argument("--no-spatial-attention", dest="spatial_attention", action="store_false",
                     default=argparse.SUPPRESS, help="ablation: channel cross-attention only")
    dca.add_argument("--merge", choices=MERGES, default=argparse.SUPPRESS,
                     help=f"how the refined skip joins the skip: residual (added, starting at zero) or paper "
                          f"(BatchNorm and ReLU of the sum) (default {DEFAULTS['merge']})")
    dca.add_argument("--channel-scores", dest="channel_scores", choices=CHANNEL_SCORES, default=argparse.SUPPRESS,
                     help=f"how channel attention normalizes its scores (docs/dca.md) (default "
                          f"{DEFAULTS['channel_scores']})")
    dca.add_argument("--spatial-scores", dest="spatial_scores", choices=SPATIAL_SCORES, default=argparse.SUPPRESS,
                     help=f"how spatial attention normalizes its scores (default {DEFAULTS['spatial_scores']})")
    dca.add_argument("--temperature", type=float, default=argparse.SUPPRESS,
                     help=f"where the learnable temperatures of cosine and qk_norm scores start (default "
                          f"{DEFAULTS['temperature']})")
    add_config.set_defaults(func=cmd_add_config)

    warm = commands.add_parser(
        "warm-start", help="make a stock model's checkpoint a DCA trainer's -pretrained_weights",
        description="Write OUT for nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER -pretrained_weights OUT: "
                    "every weight of the stock checkpoint, and DCA's weights freshly initialized as TRAINER builds "
                    "the network for DATASET and CONFIGURATION. The checkpoint itself is never changed.")
    warm.add_argument("checkpoint", metavar="STOCK_CHECKPOINT",
                      help="a stock model's checkpoint, e.g. "
                           ".../nnUNetTrainer__nnUNetPlans__2d/fold_0/checkpoint_final.pth")
    warm.add_argument("-d", dest="dataset", required=True, metavar="DATASET",
                      help="the dataset to fine-tune on, id or name, e.g. 4 or Dataset004_Hippocampus")
    warm.add_argument("-c", dest="configuration", required=True, metavar="CONFIGURATION",
                      help="the configuration to fine-tune, e.g. 2d, or one made by add-config")
    warm.add_argument("-tr", dest="trainer", default="nnUNetTrainerDCA",
                      help="the trainer to fine-tune with, found as nnUNetv2_train finds it "
                           "(default: nnUNetTrainerDCA)")
    warm.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    warm.add_argument("-o", dest="output", required=True, metavar="OUT", help="the file to write, e.g. warm_start.pth")
    warm.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never STOCK_CHECKPOINT)")
    warm.set_defaults(func=cmd_warm_start)

    compare = commands.add_parser(
        "compare", help="stock vs DCA over datasets, configurations and folds: train what is missing, report",
        description="Compare nnU-Net trainers (the first is the baseline) on the same cross-validation folds. "
                    "Always writes report.md, report.json and figures into --out from what nnU-Net wrote into "
                    "nnUNet_results; --train local or slurm first trains the missing folds with nnUNetv2_train "
                    "(resuming with --c where a checkpoint exists), one training per fold at a time: a fold "
                    "another comparison or SLURM task trains (its fold_N.nnunet-dca.lock) is skipped. "
                    "nnUNet_results changes only through nnUNetv2_train and those locks.")
    compare.add_argument("datasets", nargs="+", metavar="DATASET", help="dataset ids or names, e.g. 4 5")
    compare.add_argument("-c", dest="configurations", nargs="+", default=["2d"],
                         help="configurations (default: 2d)")
    compare.add_argument("--trainers", nargs="+", default=["nnUNetTrainer", "nnUNetTrainerDCA"],
                         help="trainers, the baseline first (default: nnUNetTrainer nnUNetTrainerDCA)")
    compare.add_argument("--folds", nargs="+", type=_fold, default=[0, 1, 2, 3, 4],
                         help="cross-validation folds (default: 0 1 2 3 4)")
    compare.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    compare.add_argument("--train", choices=TRAIN_MODES, default="none",
                         help="none: report only (default); local: train the missing folds here; slurm: submit "
                              "them as one sbatch job array")
    compare.add_argument("--out", default="nnunet_dca_compare",
                         help="folder for the report, figures and training logs (default: ./nnunet_dca_compare)")
    compare.add_argument("-device", "--device", dest="device", choices=("cuda", "cpu", "mps"), default="cuda",
                         help="device of nnUNetv2_train (default: cuda)")
    compare.add_argument("--gpus", nargs="+", default=None, metavar="GPU",
                         help="local, -device cuda: one training at a time on each of these GPUs "
                              "(CUDA_VISIBLE_DEVICES)")
    slurm = compare.add_argument_group("SLURM (--train slurm)")
    slurm.add_argument("--partition", help="sbatch --partition")
    slurm.add_argument("--gres", help="sbatch --gres per task, e.g. gpu:1; needed with -device cuda (unless an "
                                      "--sbatch-arg asks for GPUs, e.g. --gpus-per-task=1), 'none' where the cluster "
                                      "hands out GPUs without it")
    slurm.add_argument("--time", help="sbatch --time per task, e.g. 24:00:00")
    slurm.add_argument("--array-limit", dest="array_limit", type=_positive_int, default=None,
                       help="at most this many tasks at once (sbatch --array=...%%N)")
    slurm.add_argument("--sbatch-arg", dest="sbatch_args", action="append", default=[], metavar="ARG",
                       help="a further #SBATCH line, verbatim, e.g. --sbatch-arg=--mem=32G (repeatable)")
    slurm.add_argument("--dry-run", dest="dry_run", action="store_true",
                       help="print the sbatch script instead of submitting it")
    compare.set_defaults(func=cmd_compare)

    # no help: left out of the list of commands, it is what each task of compare's SLURM job array runs
    train_fold = commands.add_parser(
        "train-fold", description="Train one fold as a task of `nnunet-dca compare --train slurm` does: take the "
                                  "fold's lock, then nnUNetv2_train it as compare --train local would (nnU-Net's "
                                  "folders from the nnUNet_* variables).")
    train_fold.add_argument("dataset", metavar="DATASET", help="nnU-Net's dataset name")
    train_fold.add_argument("configuration", metavar="CONFIGURATION")
    train_fold.add_argument("fold", metavar="FOLD", type=_fold)
    train_fold.add_argument("-tr", dest="trainer", required=True)
    train_fold.add_argument("-p", dest="plans", required=True)
    train_fold.add_argument("-device", "--device", dest="device", choices=("cuda", "cpu", "mps"), default="cuda")
    train_fold.set_defaults(func=cmd_train_fold)

    attention = commands.add_parser(
        "attention", help="pictures and statistics of what a trained model's DCA attends to, in one or more cases",
        description="Load a trained DCA model as nnUNetv2_predict does; per case, preprocess it as nnU-Net does, "
                    "predict it, run the network on the sliding-window tile that holds the query voxel with DCA's "
                    "attention recorded, and write overview.png, spatial_attention.png, channel_attention.png, "
                    "skip_change.png, attention.json and attention.npz (into OUT for one case, OUT/CASE for "
                    "several); then attention_summary.json and attention_summary.png, the attention statistics "
                    "over every case, into OUT (docs/attention.md says what each holds).")
    attention.add_argument("-d", dest="dataset", required=True, metavar="DATASET",
                           help="dataset id or name, e.g. 4 or Dataset004_Hippocampus (in nnUNet_results)")
    attention.add_argument("-c", dest="configuration", required=True, metavar="CONFIGURATION",
                           help="the trained configuration, e.g. 2d, 3d_fullres, or one made by add-config")
    attention.add_argument("-tr", dest="trainer", default="nnUNetTrainerDCA",
                           help="the trainer (default: nnUNetTrainerDCA)")
    attention.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    attention.add_argument("-f", dest="fold", type=_fold_or_all, default="0", help="the fold (default: 0)")
    attention.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth",
                           help="the checkpoint in the fold's folder (default: checkpoint_final.pth)")
    attention.add_argument("-i", dest="images", nargs="+", required=True, metavar="IMAGE",
                           help="the files of one case, one per channel, named as in imagesTs (CASE_0000.nii.gz "
                                "...); or a folder of images, as nnUNetv2_predict -i takes; or the files of several "
                                "cases")
    attention.add_argument("-o", dest="out", required=True, metavar="OUT", help="folder for the pictures and numbers")
    where = attention.add_mutually_exclusive_group()
    where.add_argument("--query", type=int, nargs="+", metavar="Z Y X",
                       help="the query voxel in the image (one case only), 0-based array indices as nnU-Net's "
                            "image reader orders them (z y x for NIfTI; y x for a 2D image)")
    where.add_argument("--query-label", dest="query_label", metavar="L",
                       help="the query at the centroid of label L (value or name) in the model's own prediction, "
                            "and the statistics over its tokens (default: the predicted foreground; a case without "
                            "it: the image's centre, statistics over every token)")
    attention.add_argument("--label", metavar="FILE", help="the case's reference segmentation, drawn beside the "
                                                         "prediction; for several cases a folder of them, CASE plus "
                                                         "the dataset's file ending (a case without one is drawn "
                                                         "without)")
    attention.add_argument("-device", "--device", dest="device", choices=("cuda", "cpu"), default="cuda",
                           help="device of the network (default: cuda, as nnUNetv2_predict)")
    attention.add_argument("--overwrite", action="store_true",
                           help="replace the files of an earlier run in OUT (nothing else there)")
    attention.set_defaults(func=cmd_attention)

    demo = commands.add_parser(
        "demo", help="train and evaluate DCA on a synthetic MSD task with nnU-Net's own commands",
        description="Write a small MSD-style task, then run nnU-Net's convert, plan and preprocess, train "
                    "(nnUNetTrainerDCA), predict and evaluate on it, and print the Dice per label.")
    demo.add_argument("--out", default="nnunet_dca_demo",
                      help="a new or empty folder for everything the demo writes (default: ./nnunet_dca_demo)")
    demo.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device for training and prediction")
    demo.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                      help=f"training iterations (one epoch; default {DEFAULT_ITERATIONS})")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nnunet-dca` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # the command as typed, for what a command writes down (compare's SLURM script); sys.argv is another
    # program's where main is called from Python
    args.command_line = ["nnunet-dca", *(sys.argv[1:] if argv is None else argv)]
    try:
        with warnings.catch_warnings():
            # the deprecation notes of libraries nnU-Net imports (timm, torch) speak to their developers, and
            # would stand between the user and this command's one line
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return args.func(args)
    except UsageError as e:
        one_line = " ".join(str(e).split())  # messages passed on from nnU-Net may span lines
        print(f"nnunet-dca {args.command}: error: {one_line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # what was running has stopped and said so (compare's trainings): no traceback
        print(f"nnunet-dca {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
