"""The report's figures as PNG, drawn on matplotlib's Agg canvas (no display, and pyplot's global backend is
left as the user set it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nnunet_dca.compare.results import Curves

SHORT_RUN_EPOCHS = 20


def case_scatter(path: Path, baseline: str, trainer: str,
                 dice_by_fold: Mapping[int, tuple[Sequence[float], Sequence[float]]], title: str) -> Path:
    """Per-case Dice, the baseline's on x and the trainer's on y (fold -> (baseline values, trainer values), paired
    by position), one colour per fold: points above the diagonal are cases the trainer wins."""
    figure = Figure(figsize=(5.5, 5.5))
    axis = figure.add_subplot()
    axis.plot([0, 1], [0, 1], color="grey", linewidth=1, label="equal")
    for fold, (baseline_dice, trainer_dice) in dice_by_fold.items():
        axis.scatter(baseline_dice, trainer_dice, s=14, alpha=0.7, label=f"fold {fold}")
    axis.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xlabel=f"{baseline} Dice", ylabel=f"{trainer} Dice",
             title=f"{title}\nabove the diagonal: {trainer} is better")
    axis.legend(loc="lower right", fontsize="small")
    return _save(figure, path)


def training_curves(path: Path, curves: Mapping[str, Sequence[Curves | None]], folds: Sequence[int],
                    title: str) -> Path:
    """nnU-Net's progress.png data of every trainer (trainer -> curves per fold, in the order of folds), one column
    per fold: pseudo Dice (dotted) and its moving average (solid) on top, train (solid) and validation (dashed)
    loss below; one colour per trainer."""
    figure = Figure(figsize=(4.5 * len(folds), 7), layout="constrained")
    axes = figure.subplots(2, len(folds), sharex="col", sharey="row", squeeze=False)
    figure.suptitle(title)
    for column, fold in enumerate(folds):
        dice_axis, loss_axis = axes[0][column], axes[1][column]
        dice_axis.set_title(f"fold {fold}")
        for index, (trainer, trainer_curves) in enumerate(curves.items()):
            fold_curves = trainer_curves[column]
            if fold_curves is None:
                continue
            epochs = range(fold_curves.epochs)
            # a line needs two epochs: the points of a short run are drawn too
            style = {"color": f"C{index}", "marker": "." if fold_curves.epochs < SHORT_RUN_EPOCHS else None}
            dice_axis.plot(epochs, fold_curves.pseudo_dice, linestyle=":", linewidth=1, **style)
            dice_axis.plot(epochs, fold_curves.pseudo_dice_ema, label=trainer, **style)
            loss_axis.plot(epochs, fold_curves.train_loss, label=f"{trainer} train", **style)
            loss_axis.plot(epochs, fold_curves.val_loss, linestyle="--", label=f"{trainer} validation", **style)
        if not dice_axis.has_data():
            dice_axis.text(0.5, 0.5, "no checkpoint yet", ha="center", transform=dice_axis.transAxes)
        loss_axis.set_xlabel("epoch")
    axes[0][0].set_ylabel("pseudo Dice (dotted), its moving average")
    axes[1][0].set_ylabel("loss")
    for row in axes:
        first_with_data = next((axis for axis in row if axis.has_data()), None)
        if first_with_data is not None:
            first_with_data.legend(fontsize="small")
    return _save(figure, path)


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure).print_png(path)
    return path
