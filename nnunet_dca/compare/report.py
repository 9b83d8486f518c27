"""report.md and report.json of a study, with its figures: what nnU-Net wrote, per dataset x configuration.

report.md holds the tables and links the figures (in figures/, relative links); report.json holds every number
behind them, per case and per epoch included, for the user's own plots. Undefined numbers (NaN) are null there.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from nnunet_dca.compare import figures
from nnunet_dca.compare.results import COMPLETE, EMPTY_CASE_DICE, ConfigurationResults, FoldResult, collect
from nnunet_dca.compare.statistics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    MIN_NONZERO_DIFFERENCES,
    SIGNIFICANCE,
    compare,
    describe_folds,
    fold_list,
)

if TYPE_CHECKING:
    from nnunet_dca.compare.study import Study

OVERALL = "overall"
FIGURES = "figures"
GPU_MEMORY_NOTE = ("GPU memory is not shown: nnU-Net logs none (neither the checkpoint's logging nor debug.json "
                   "holds it).")
DICE_NOTE = ("Mean Dice over the fold's validation cases, per label and overall (nnU-Net's foreground_mean: the "
             "mean of the label columns), from each fold's validation/summary.json; a case whose reference and "
             "prediction are both empty has no Dice for that label and is left out of its mean, as nnU-Net does. "
             "CV: nnU-Net's cross-validation number over the requested folds, their cases pooled, shown only when "
             "every requested fold is complete. State: complete (summary.json written), not validated "
             "(checkpoint_final.pth without summary.json: the validation after training was cut off; --train local "
             "or slurm validates it, as `nnUNetv2_train ... --val --npz` does), training (fold folder without final "
             "checkpoint: training or stopped), missing (no fold folder).")
COMPARISON_NOTE = (f"Difference: trainer minus baseline, Dice per case, over the cases of every fold both completed "
                   f"(pooled; the folds compared and those left out are named below the table). Where a case's "
                   f"reference and prediction are both empty, nnU-Net's Dice is undefined (NaN) and the tables "
                   f"above leave it out; here it counts as {EMPTY_CASE_DICE:g}, a correct empty call, as BraTS "
                   f"counts it: a trainer that predicts voxels there (Dice 0) loses the case, and no case is left "
                   f"out. A case's overall Dice is the mean over every label with that rule (report.json's per-case "
                   f"'overall'). {CONFIDENCE:.0%} CI: bootstrap (BCa, {BOOTSTRAP_RESAMPLES} resamples, seed "
                   f"{BOOTSTRAP_SEED}) of the mean difference. Wilcoxon p: two-sided signed-rank test over those "
                   f"cases, exact ties left out; with fewer than {MIN_NONZERO_DIFFERENCES} differing cases it cannot "
                   f"reach {SIGNIFICANCE}. Wins / ties / losses: cases the trainer scores higher / exactly the same / "
                   f"lower. Per fold: each fold's mean difference; the folds are the independent training runs, the "
                   f"pooled test is not.")
COST_NOTE = ("Parameters: the trained weights in the checkpoint (BatchNorm's running statistics not counted). "
             "Epoch time: the median over every logged epoch of every fold (the first epochs include compilation "
             "and worker start-up), from the checkpoint's epoch timestamps; compare it only between trainers on the "
             "same device (debug.json). " + GPU_MEMORY_NOTE)


def write_report(study: Study, out: Path) -> Path:
    """Writes report.md, report.json and the figures under `out`; returns report.md's path. Raises StudyError
    (one line) on results that cannot be compared, such as trainers validated on different splits."""
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# nnU-Net comparison against {study.baseline}", "",
             f"Results: `{study.results}`. Plans: {study.plans}. Trainers: {', '.join(study.trainers)} (the first is "
             f"the baseline). Folds: {', '.join(map(str, study.folds))}.", ""]
    sections = []
    for results in collect(study):
        section_lines, section = _configuration_report(results, out)
        lines += section_lines
        sections.append(section)
    report = {"results": str(study.results), "plans": study.plans, "baseline": study.baseline,
              "trainers": list(study.trainers), "folds": list(study.folds), "gpu_memory": GPU_MEMORY_NOTE,
              "bootstrap": {"confidence": CONFIDENCE, "resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED,
                            "method": "BCa"},
              "configurations": sections}
    (out / "report.json").write_text(json.dumps(_without_nan(report), indent=1))
    markdown = out / "report.md"
    markdown.write_text("\n".join(lines))
    return markdown


def cross_validation(fold_results: list[FoldResult]) -> dict[str, float]:
    """nnU-Net's cross-validation Dice (as nnUNetv2_find_best_configuration computes it on every fold's cases
    pooled): per label the mean over all cases with a Dice, and overall the mean of those per-label means."""
    labels = list(fold_results[0].mean_dice)
    pooled = {label: _nanmean([dice[label] for result in fold_results for dice in result.case_dice.values()])
              for label in labels}
    return {**pooled, OVERALL: float(np.mean(list(pooled.values())))}


def _nanmean(values: list[float]) -> float:
    """The mean of the values that are not NaN; NaN (without numpy's warning) when all are."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values)) if values else float("nan")


def _configuration_report(results: ConfigurationResults, out: Path) -> tuple[list[str], dict[str, Any]]:
    name = f"{results.dataset} {results.configuration}"
    labels = results.label_names
    lines = [f"## {name}", "", "### Dice per trainer", ""]
    trainers = {}
    for trainer, fold_results in results.trainers.items():
        table_lines, trainers[trainer] = _dice_table(trainer, fold_results, labels)
        lines += table_lines
    lines += [DICE_NOTE, ""]

    comparisons = _comparisons(results, labels)
    lines += [f"### Paired comparison against {results.baseline}", ""]
    lines += _comparison_table(comparisons, labels)
    lines += [""] + [f"- {trainer}: {words}" for trainer, words in _fold_words(comparisons).items()]
    lines += ["", COMPARISON_NOTE, ""]

    cost = {trainer: _cost(fold_results) for trainer, fold_results in results.trainers.items()}
    lines += ["### Cost", ""] + _cost_table(cost, results.baseline) + ["", COST_NOTE, ""]

    figure_files = _figures(results, out)
    lines += ["### Figures", ""]
    lines += [f"![{caption}]({path})" for caption, path in figure_files.items()] + [""]
    section = {"dataset": results.dataset, "configuration": results.configuration, "labels": labels,
               "trainers": trainers, "comparisons": comparisons, "cost": cost, "figures": figure_files}
    return lines, section


def _dice_table(trainer: str, fold_results: list[FoldResult], labels: dict[str, str]
                ) -> tuple[list[str], dict[str, Any]]:
    header = ["fold", "state", *(_label(key, labels) for key in labels), OVERALL, "cases"]
    rows = []
    folds = {}
    for result in fold_results:
        dice = {**result.mean_dice, OVERALL: result.foreground_mean_dice}
        rows.append([str(result.run.fold), result.state, *(_dice(dice.get(key)) for key in [*labels, OVERALL]),
                     str(len(result.case_dice)) if result.state == COMPLETE else ""])
        folds[result.run.fold] = _fold_record(result)
    incomplete = [result for result in fold_results if result.state != COMPLETE]
    if incomplete:
        cv = None
        rows.append(["CV", f"incomplete: {_fold_states(incomplete)}", *[""] * (len(labels) + 2)])
    else:
        cv = cross_validation(fold_results)
        rows.append(["CV", fold_list([result.run.fold for result in fold_results]),
                     *(_dice(cv[key]) for key in [*labels, OVERALL]),
                     str(sum(len(result.case_dice) for result in fold_results))])
    lines = [f"#### {trainer}", "", *_table(header, rows), ""]
    return lines, {"folds": folds, "missing_folds": [result.run.fold for result in incomplete],
                   "cross_validation": cv}


def _fold_states(fold_results: list[FoldResult]) -> str:
    """'fold 1 training, folds 2, 3 missing': the folds of each state, in the order of the folds."""
    folds_by_state: dict[str, list[int]] = {}
    for result in fold_results:
        folds_by_state.setdefault(result.state, []).append(result.run.fold)
    return ", ".join(f"{fold_list(folds)} {state}" for state, folds in folds_by_state.items())


def _fold_record(result: FoldResult) -> dict[str, Any]:
    return {"state": result.state, "mean_dice": result.mean_dice, OVERALL: result.foreground_mean_dice,
            "cases": {case: {**dice, OVERALL: overall} for (case, dice), overall
                      in zip(result.case_dice.items(), result.case_values().values())},
            "checkpoint": result.checkpoint, "parameters": result.parameters, "device": result.device,
            "curves": asdict(result.curves) if result.curves else None}


def _comparisons(results: ConfigurationResults, labels: dict[str, str]) -> list[dict[str, Any]]:
    comparisons = []
    for trainer in list(results.trainers)[1:]:
        folds_compared, folds_left_out = _fold_coverage(results, trainer)
        # with one label the overall Dice is that label's: one row says it
        for label in [None, *labels] if len(labels) > 1 else [None]:
            comparison = compare(_complete_cases(results.trainers[results.baseline], label),
                                 _complete_cases(results.trainers[trainer], label))
            comparisons.append({"trainer": trainer, "baseline": results.baseline,
                                "dice_of": OVERALL if label is None else label, **asdict(comparison),
                                "folds_compared": folds_compared, "folds_left_out": folds_left_out,
                                "folds_in_words": describe_folds(comparison, trainer)})
    return comparisons


def _fold_coverage(results: ConfigurationResults, trainer: str) -> tuple[list[int], dict[int, str]]:
    """The requested folds the comparison with the baseline pools (complete for both), and those it leaves out,
    each with why: the state of the trainers whose fold is not complete."""
    compared, left_out = [], {}
    for index, fold in enumerate(results.folds):
        incomplete = [f"{name}: {results.trainers[name][index].state}" for name in (results.baseline, trainer)
                      if results.trainers[name][index].state != COMPLETE]
        if incomplete:
            left_out[fold] = ", ".join(incomplete)
        else:
            compared.append(fold)
    return compared, left_out


def _complete_cases(fold_results: list[FoldResult], label: str | None) -> dict[int, dict[str, float]]:
    return {result.run.fold: result.case_values(label) for result in fold_results if result.state == COMPLETE}


def _comparison_table(comparisons: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    header = ["trainer", "Dice of", "cases", "mean difference", f"{CONFIDENCE:.0%} CI", "Wilcoxon p",
              "wins / ties / losses", "per fold"]
    rows = []
    for comparison in comparisons:
        interval, p, p_note = comparison["interval"], comparison["wilcoxon_p"], comparison["wilcoxon_note"]
        rows.append([
            comparison["trainer"], _label(comparison["dice_of"], labels), str(comparison["cases"]),
            _difference(comparison["mean_difference"]),
            f"[{_difference(interval[0])}, {_difference(interval[1])}]" if interval
            else f"n/a ({comparison['interval_note']})",
            ("n/a" if p is None else f"{p:.3g}") + (f" ({p_note})" if p_note else ""),
            f"{comparison['wins']} / {comparison['ties']} / {comparison['losses']}",
            ", ".join(f"{fold}: {_difference(value)}" for fold, value in comparison["fold_differences"].items())])
    return _table(header, rows)


def _fold_words(comparisons: list[dict[str, Any]]) -> dict[str, str]:
    """Per trainer, the folds its comparison covers and the overall comparison's per-fold agreement, in words:
    'compared: folds 0, 1; left out: fold 2 (nnUNetTrainerDCA: training). All 2 folds agree: ...'."""
    words = {}
    for comparison in comparisons:
        if comparison["dice_of"] == OVERALL:
            compared = fold_list(comparison["folds_compared"]) if comparison["folds_compared"] else "no fold"
            left_out = ", ".join(f"fold {fold} ({why})" for fold, why in comparison["folds_left_out"].items())
            words[comparison["trainer"]] = (f"compared: {compared}" + (f"; left out: {left_out}" if left_out else "")
                                            + f". {comparison['folds_in_words']}")
    return words


def _cost(fold_results: list[FoldResult]) -> dict[str, Any]:
    with_checkpoint = [result for result in fold_results if result.curves is not None]
    epoch_seconds = [seconds for result in with_checkpoint for seconds in result.curves.epoch_seconds]
    return {"parameters": with_checkpoint[0].parameters if with_checkpoint else None,
            "median_epoch_seconds": float(np.median(epoch_seconds)) if epoch_seconds else None,
            "epochs": {result.run.fold: result.curves.epochs for result in with_checkpoint},
            "devices": sorted({result.device for result in fold_results if result.device})}


def _cost_table(cost: dict[str, dict[str, Any]], baseline: str) -> list[str]:
    header = ["trainer", "parameters", "vs baseline", "epoch time (s)", "vs baseline", "epochs per fold", "device"]
    base = cost[baseline]
    rows = []
    for trainer, trainer_cost in cost.items():
        parameters, seconds = trainer_cost["parameters"], trainer_cost["median_epoch_seconds"]
        is_baseline = trainer == baseline
        rows.append([
            trainer, f"{parameters:,}" if parameters is not None else "no checkpoint",
            "baseline" if is_baseline else
            _relative(parameters, base["parameters"], lambda new, old: f"{new - old:+,} ({new / old - 1:+.1%})"),
            f"{seconds:.1f}" if seconds is not None else "no checkpoint",
            "baseline" if is_baseline else
            _relative(seconds, base["median_epoch_seconds"], lambda new, old: f"x{new / old:.2f}"),
            ", ".join(f"{fold}: {epochs}" for fold, epochs in trainer_cost["epochs"].items()),
            ", ".join(trainer_cost["devices"]) or "no debug.json"])
    return _table(header, rows)


def _relative(value: float | None, baseline_value: float | None, describe: Callable[[float, float], str]) -> str:
    if value is None or not baseline_value:
        return ""
    return describe(value, baseline_value)


def _figures(results: ConfigurationResults, out: Path) -> dict[str, str]:
    """Draws the configuration's figures; returns caption -> path relative to `out`."""
    stem = f"{results.dataset}__{results.configuration}"
    title = f"{results.dataset} {results.configuration}"
    baseline_cases = _complete_cases(results.trainers[results.baseline], None)
    files = {}
    for trainer in list(results.trainers)[1:]:
        trainer_cases = _complete_cases(results.trainers[trainer], None)
        dice_by_fold = {}
        for fold in sorted(set(baseline_cases) & set(trainer_cases)):
            cases = sorted(baseline_cases[fold])
            dice_by_fold[fold] = ([baseline_cases[fold][case] for case in cases],
                                  [trainer_cases[fold][case] for case in cases])
        path = figures.case_scatter(out / FIGURES / f"{stem}__cases__{trainer}.png", results.baseline, trainer,
                                    dice_by_fold, title)
        files[f"per-case Dice, {results.baseline} against {trainer}"] = str(path.relative_to(out))
    curves = {trainer: [result.curves for result in fold_results] for trainer, fold_results in results.trainers.items()}
    path = figures.training_curves(out / FIGURES / f"{stem}__curves.png", curves, results.folds, title)
    files["training curves"] = str(path.relative_to(out))
    return files


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def _label(key: str, labels: dict[str, str]) -> str:
    return f"{key} {labels[key]}" if key in labels else key


def _dice(value: float | None) -> str:
    return "" if value is None else "n/a" if math.isnan(value) else f"{value:.4f}"


def _difference(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def _without_nan(value: Any) -> Any:
    """JSON has no NaN: undefined numbers become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(item) for item in value]
    return value
