"""The attention pictures, PNG on matplotlib's Agg canvas, each a grid of panels of PANEL_PIXELS x PANEL_PIXELS.

Every picture is drawn in the preprocessed voxels the network sees (the plans' transpose, the crop to the nonzero
region, the resampling), rows down and columns across as in nnU-Net's arrays, through the query's slice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from nnunet_dca.attention.record import TileRecord, channel_matrix, query_attention, skip_change
from nnunet_dca.attention.tile import Tile
from nnunet_dca.recording import StageRecord

PANEL_PIXELS = 300
DPI = 100
QUERY_MARKER = {"marker": "+", "color": "cyan", "markersize": 12, "markeredgewidth": 2}
LABEL_COLOURS = ["tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                 "tab:cyan"]


def overview(path: Path, data: np.ndarray, channel_names: Sequence[str], prediction: np.ndarray,
             reference: np.ndarray | None, tile: Tile, query: Sequence[int], title: str) -> Path:
    """One row: each image channel, the prediction and the reference (if given) through the query's slice (Z), the
    tile outlined and the query marked. data (C, Z, Y, X); prediction, reference (Z, Y, X)."""
    largest = int(max(prediction.max(), reference.max() if reference is not None else 0, 1))
    labels = ListedColormap(["black", *(LABEL_COLOURS if largest <= len(LABEL_COLOURS)
                                        else colormaps["turbo"].resampled(largest)(range(largest)))])
    maps = [(f"image: {name}", data[c, query[0]], "gray") for c, name in enumerate(channel_names)]
    maps.append(("prediction", prediction[query[0]], labels))
    if reference is not None:
        maps.append(("reference (--label)", reference[query[0]], labels))
    figure, axes = _panels(1, len(maps), title)
    in_plane_start, in_plane_size = tile.start[-2:], tile.size[-2:]
    for axis, (name, image, colours) in zip(axes[0], maps):
        is_label = colours is labels
        axis.imshow(image, cmap=colours, interpolation="nearest", vmin=0 if is_label else None,
                    vmax=labels.N - 1 if is_label else None)
        axis.add_patch(Rectangle((in_plane_start[1] - 0.5, in_plane_start[0] - 0.5), in_plane_size[1],
                                 in_plane_size[0], fill=False, edgecolor="yellow", linewidth=1.5))
        axis.plot(query[2], query[1], **QUERY_MARKER)
        axis.set_title(name, fontsize="small")
    return _save(figure, path)


def spatial_attention(path: Path, record: TileRecord, tile: Tile, tile_image: np.ndarray, title: str) -> Path:
    """Rows: stage (and block), columns: head. The query token's attention over the token grid (the token plane
    through the query in 3D), drawn over the tile's image (Y, X) at the tokens' pooling windows."""
    rows = [(stage, block, weights) for stage, record_stage in enumerate(record.stages)
            for block, weights in enumerate(record_stage.spatial_attention)]
    heads = max((weights.shape[1] for _, _, weights in rows), default=1)
    figure, axes = _panels(max(len(rows), 1), heads, title)
    height, width = tile_image.shape
    for row, (stage, block, weights) in enumerate(rows):
        maps = attention_in_query_plane(record, weights)
        for head, attention in enumerate(maps):
            axis = axes[row][head]
            axis.imshow(tile_image, cmap="gray", interpolation="nearest")
            shown = axis.imshow(attention.numpy(), cmap="inferno", alpha=0.6, interpolation="nearest",
                                extent=(-0.5, width - 0.5, height - 0.5, -0.5))
            figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.02)
            axis.plot(tile.query[-1], tile.query[-2], **QUERY_MARKER)
            axis.set_title(f"stage {stage}{_block(block, record)} head {head}: max p {float(attention.max()):.3f}",
                           fontsize="small")
        for axis in axes[row][len(maps):]:  # a stage with fewer heads than another
            axis.set_axis_off()
    return _save(figure, path)


def channel_attention(path: Path, record: TileRecord, features: Sequence[int], title: str) -> Path:
    """Rows: stage (and block). Each stage's C_i x C_sum channel attention; the columns of each stage's channels
    between white lines."""
    rows = [(stage, block, weights) for stage, record_stage in enumerate(record.stages)
            for block, weights in enumerate(record_stage.channel_attention)]
    figure, axes = _panels(max(len(rows), 1), 2, title, merge_columns=True)
    bounds = np.cumsum([0, *features])
    for row, (stage, block, weights) in enumerate(rows):
        axis = axes[row][0]
        shown = axis.imshow(channel_matrix(weights[0]).numpy(), cmap="viridis", aspect="auto",
                            interpolation="nearest")
        figure.colorbar(shown, ax=axis, fraction=0.03, pad=0.01)
        for bound in bounds[1:-1]:
            axis.axvline(bound - 0.5, color="white", linewidth=1)
        axis.set_xticks((bounds[:-1] + bounds[1:]) / 2 - 0.5, [f"stage {j}" for j in range(len(features))],
                        fontsize="small")
        axis.set_ylabel(f"stage {stage}{_block(block, record)}\nchannels", fontsize="small")
    return _save(figure, path)


def skip_changes(path: Path, record: TileRecord, tile: Tile, summary: Sequence[dict], title: str) -> Path:
    """One panel per stage: |refined skip - skip|, mean over channels, at the skip's resolution over the tile's
    slice through the query, the query marked."""
    figure, axes = _panels(1, len(record.stages), title)
    for axis, stage, numbers in zip(axes[0], record.stages, summary):
        change = skip_change_in_query_slice(stage, tile)
        height, width = tile.size[-2:]
        shown = axis.imshow(change.numpy(), cmap="magma", interpolation="nearest",
                            extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.02)
        axis.plot(tile.query[-1], tile.query[-2], **QUERY_MARKER)
        ratio = numbers["skip_change_rms"]
        axis.set_title(f"stage {numbers['stage']}: rms change / rms skip "
                       f"{'- (the skip is zero)' if ratio is None else f'{ratio:.3f}'}", fontsize="small")
    return _save(figure, path)


def attention_summary(path: Path, rows: list[list[dict]], summary: Sequence[dict], title: str) -> Path:
    """Rows: stage (and block). Left: histogram of channel attention's effective number of attended channels over
    every row (log x; lines at 3 and C_sum / 4, the targets' bounds on the median, and at C_sum). Right: histogram of
    spatial attention's entropy / ln N over every query row (lines at 0.95, the target's bound, and at 1, uniform).
    rows: statistics.joined_rows of every case; summary: statistics.summarize of the same."""
    entries = [(stage, block, entry, numbers) for stage, (blocks, stage_summary) in enumerate(zip(rows, summary))
               for block, (entry, numbers) in enumerate(zip(blocks, stage_summary["blocks"]))]
    several_blocks = any(len(blocks) > 1 for blocks in rows)
    figure, axes = _panels(max(len(entries), 1), 2, title, ticks=True)
    for (stage, block, entry, numbers), (left, right) in zip(entries, axes):
        name = f"stage {stage}" + (f" block {block}" if several_blocks else "")
        if entry["channel"] is None:
            left.set_axis_off()
            left.set_title(f"{name}: no channel attention", fontsize="small")
        else:
            heads, c_sum = entry["channel_shape"]  # a row's length: C_sum / h
            # exp(entropy) is at least 1; rounding may put it a hair below
            left.hist(np.clip(entry["channel"]["effective"], 1, c_sum), bins=np.geomspace(1, c_sum, 41))
            left.set_xscale("log")
            for bound, colour in ((3, "tab:red"), (c_sum / 4, "tab:red"), (c_sum, "gray")):
                left.axvline(bound, color=colour, linestyle="--", linewidth=1)
            channel = numbers["channel"]
            left.set_title(f"{name}: channel attention, {channel['rows']} rows\nmedian "
                           f"{channel['effective']['median']:.1f} of {'C_sum' if heads == 1 else 'C_sum / h'} {c_sum}, "
                           f"{channel['collapsed_share']:.0%} collapsed", fontsize="small")
            left.set_xlabel("effective channels, exp(entropy)", fontsize="small")
        if entry["spatial"] is None:
            right.set_axis_off()
            right.set_title(f"{name}: no spatial attention", fontsize="small")
        else:
            right.hist(np.clip(entry["spatial"]["entropy_ratio"], 0, 1), bins=np.linspace(0, 1, 51))
            right.axvline(0.95, color="tab:red", linestyle="--", linewidth=1)
            right.axvline(1, color="gray", linestyle="--", linewidth=1)
            spatial = numbers["spatial"]
            right.set_title(f"{name}: spatial attention, {spatial['rows']} rows\nmean "
                            f"{spatial['entropy_ratio']['mean']:.3f}, N = {entry['tokens']}", fontsize="small")
            right.set_xlabel("entropy / ln N", fontsize="small")
        for axis in (left, right):
            axis.tick_params(labelsize="x-small")
    return _save(figure, path)


def attention_in_query_plane(record: TileRecord, weights: torch.Tensor) -> torch.Tensor:
    """The query token's spatial attention from a block's weights (1, h, N, N) as (h, G_y, G_x): in 3D the plane of
    tokens through the query's."""
    maps = query_attention(record, weights)
    return maps[:, record.query_token[0]] if len(record.grid) == 3 else maps


def skip_change_in_query_slice(stage: StageRecord, tile: Tile) -> torch.Tensor:
    """|refined skip - skip|, mean over channels, (S_y, S_x): in 3D the skip's slice through the query."""
    change = skip_change(stage)
    if change.dim() == 2:
        return change
    return change[min(tile.query[0] * change.shape[0] // tile.size[0], change.shape[0] - 1)]


def tile_slice(tile_input: torch.Tensor, tile: Tile) -> np.ndarray:
    """The tile's first image channel through the query, (Y, X)."""
    image = tile_input[0, 0]
    return (image[tile.query[0]] if image.dim() == 3 else image).float().numpy()


def picture_size(rows: int, columns: int) -> tuple[int, int]:
    """(width, height) in pixels of a picture of rows x columns panels."""
    return columns * PANEL_PIXELS, rows * PANEL_PIXELS


def _block(block: int, record: TileRecord) -> str:
    blocks = max(len(stage.spatial_attention) or len(stage.channel_attention) for stage in record.stages)
    return f" block {block}" if blocks > 1 else ""


def _panels(rows: int, columns: int, title: str, merge_columns: bool = False, ticks: bool = False
            ) -> tuple[Figure, list[list]]:
    width, height = picture_size(rows, columns)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    figure.suptitle(title, fontsize="small")
    axes = figure.subplots(rows, 1 if merge_columns else columns, squeeze=False)
    for axis in axes.flat if not ticks else []:  # images need no ticks; histograms do
        axis.set_xticks([])
        axis.set_yticks([])
    return figure, axes.tolist()


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure).print_png(path)
    return path
