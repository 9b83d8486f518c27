"""The paired comparison of a trainer against the baseline over the same validation cases.

Cases of one fold share one training run, so a per-case test inside a fold measures that run as much as the
method: the test here pools the cases of every fold both trainers completed, and the per-fold mean differences
(one number per pair of runs) stand beside it, with words when their signs disagree.

Ties are exact equality: Dice is computed from voxel counts, so the same segmentation gives the same float, and
summary.json keeps floats exactly; any other difference is at least one voxel. The Wilcoxon test drops the ties
(scipy's zero_method 'wilcox') the same way the counts keep them apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0  # a fixed seed: the same results give the same interval in every report
# with n nonzero differences the signed-rank test's smallest two-sided p is 2 / 2**n: 0.0625 for n = 5
MIN_NONZERO_DIFFERENCES = 6
SIGNIFICANCE = 0.05
NO_PAIRS = "no paired cases"


@dataclass(frozen=True)
class PairedComparison:
    """A trainer minus the baseline, Dice per case, over the cases of the folds both completed.

    cases: the pairs compared. interval and wilcoxon_p are None where they cannot be computed, and their note says
    why; a wilcoxon_p with a note is scipy's over too few differing cases to reach SIGNIFICANCE. wins: cases the
    trainer scores higher. fold_differences: the mean difference of each fold, the runs' own comparison.
    """

    cases: int
    mean_difference: float | None
    interval: tuple[float, float] | None
    interval_note: str
    wilcoxon_p: float | None
    wilcoxon_note: str
    wins: int
    ties: int
    losses: int
    fold_differences: dict[int, float]
    fold_cases: dict[int, int]

    @property
    def folds_disagree(self) -> bool:
        signs = {np.sign(difference) for difference in self.fold_differences.values()}
        return 1 in signs and -1 in signs


def compare(baseline: Mapping[int, Mapping[str, float]], trainer: Mapping[int, Mapping[str, float]]
            ) -> PairedComparison:
    """Compares per-case Dice (fold -> case -> Dice, every Dice a number: FoldResult.case_values) of a trainer
    against the baseline, pairing cases by fold and case identifier over the folds present in both."""
    differences_by_fold: dict[int, np.ndarray] = {}
    for fold in sorted(set(baseline) & set(trainer)):
        cases = sorted(set(baseline[fold]) & set(trainer[fold]))
        if cases:
            differences_by_fold[fold] = np.array([trainer[fold][case] - baseline[fold][case] for case in cases])
    differences = np.concatenate(list(differences_by_fold.values())) if differences_by_fold else np.zeros(0)
    interval, interval_note = _bootstrap_interval(differences)
    wilcoxon_p, wilcoxon_note = _wilcoxon(differences)
    return PairedComparison(
        cases=differences.size,
        mean_difference=float(differences.mean()) if differences.size else None,
        interval=interval, interval_note=interval_note, wilcoxon_p=wilcoxon_p, wilcoxon_note=wilcoxon_note,
        wins=int((differences > 0).sum()), ties=int((differences == 0).sum()), losses=int((differences < 0).sum()),
        fold_differences={fold: float(values.mean()) for fold, values in differences_by_fold.items()},
        fold_cases={fold: values.size for fold, values in differences_by_fold.items()})


def describe_folds(comparison: PairedComparison, trainer: str) -> str:
    """The per-fold differences in words: whether the runs agree with each other, which the pooled test hides."""
    folds = comparison.fold_differences
    if not folds:
        return "No fold is complete for both trainers."
    if len(folds) == 1:
        return ("One fold only: its cases share one training run per trainer, so the test measures those runs as "
                "much as the method.")
    better = [fold for fold, difference in folds.items() if difference > 0]
    worse = [fold for fold, difference in folds.items() if difference < 0]
    equal = [fold for fold, difference in folds.items() if difference == 0]
    also_equal = f", equal (mean difference 0) in {fold_list(equal)}" if equal else ""
    if comparison.folds_disagree:
        return (f"Folds disagree in sign: {trainer} is better in {fold_list(better)} and worse in {fold_list(worse)}"
                f"{also_equal}; the pooled test mixes runs that went opposite ways.")
    if not equal:
        return f"All {len(folds)} folds agree: {trainer} is {'better' if better else 'worse'} in each."
    if not better and not worse:
        return f"All {len(folds)} folds are equal: the mean difference is 0 in each."
    direction, leaning = ("better", better) if better else ("worse", worse)
    return f"The folds do not all agree: {trainer} is {direction} in {fold_list(leaning)}{also_equal}."


def fold_list(folds: list[int]) -> str:
    """'fold 3' or 'folds 3, 4'."""
    return ("fold " if len(folds) == 1 else "folds ") + ", ".join(map(str, folds))


def _bootstrap_interval(differences: np.ndarray) -> tuple[tuple[float, float] | None, str]:
    if differences.size == 0:
        return None, NO_PAIRS
    if differences.size < 2:
        return None, "fewer than 2 cases"
    if np.all(differences == differences[0]):
        return None, "all differences are equal, so resampling cannot vary"
    result = stats.bootstrap((differences,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                             rng=np.random.default_rng(BOOTSTRAP_SEED))
    return (float(result.confidence_interval.low), float(result.confidence_interval.high)), ""


def _wilcoxon(differences: np.ndarray) -> tuple[float | None, str]:
    if differences.size == 0:
        return None, NO_PAIRS
    nonzero = int(np.count_nonzero(differences))
    if nonzero == 0:
        return None, "no case differs"
    p = float(stats.wilcoxon(differences, zero_method="wilcox").pvalue)
    if nonzero < MIN_NONZERO_DIFFERENCES:
        return p, (f"{nonzero} differing cases, too few to reach p < {SIGNIFICANCE}: the smallest p is "
                   f"{2 / 2 ** nonzero:.3g}")
    return p, ""
