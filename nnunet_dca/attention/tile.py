"""Where to look: the query voxel (given, or the centroid of a predicted label) and the sliding-window tile of
nnU-Net's prediction that holds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

from nnunet_dca.attention.model import AttentionError


def label_values(label: str, labels: dict[str, int | list[int]]) -> tuple[int, ...]:
    """The segmentation values of a foreground label or region given by name or by value (dataset.json's
    `labels`; a region is the values it lists). The background and nnU-Net's ignore label are refused."""
    foreground = {name: tuple(value) if isinstance(value, (list, tuple)) else (value,) for name, value in labels.items()
                  if name not in ("background", "ignore") and value != 0}
    if label in foreground:
        return foreground[label]
    values = sorted({value for region in foreground.values() for value in region})
    if label.isdigit() and int(label) in values:
        return (int(label),)
    known = ", ".join(f"{'/'.join(map(str, value))} ({name})" for name, value in foreground.items())
    if label in ("background", "0"):
        raise AttentionError(f"label {label} is the background; give a foreground label: {known}")
    if label == "ignore" or (label.isdigit() and int(label) == labels.get("ignore")):
        raise AttentionError(f"label {label} is nnU-Net's ignore label, which the model never predicts; give a "
                             f"foreground label: {known}")
    raise AttentionError(f"the dataset has no label {label!r}; its foreground labels are {known}")


def centroid(segmentation: np.ndarray, values: Sequence[int] | None) -> tuple[int, ...] | None:
    """The voxel nearest to the centroid of the voxels holding one of `values` (None: any foreground value), or None
    if there is none."""
    voxels = np.argwhere(np.isin(segmentation, values) if values is not None else segmentation > 0)
    return tuple(int(c) for c in np.rint(voxels.mean(axis=0))) if len(voxels) else None


@dataclass(frozen=True)
class Tile:
    """The sliding-window tile holding the query, in preprocessed voxels along the patch's axes: (Y, X) in the
    query's slice for a 2D configuration, (Z, Y, X) for a 3D one. `start` is negative where nnU-Net pads an image
    smaller than the patch (with zeros, as it does for prediction)."""

    slice_z: int | None  # the slice a 2D configuration's tile lies in; None in 3D
    start: tuple[int, ...]
    size: tuple[int, ...]  # the patch size
    query: tuple[int, ...]  # the query in the tile's own voxels

    def token(self, grid: Sequence[int]) -> tuple[int, ...]:
        """The token whose pooling window holds the query, on a token grid over the tile."""
        return tuple(min(q * g // s, g - 1) for q, g, s in zip(self.query, grid, self.size))


def tile_around(data: np.ndarray, patch_size: Sequence[int], query: Sequence[int], step: float
                ) -> tuple[Tile, torch.Tensor]:
    """The tile of nnU-Net's sliding window (data padded to the patch size, tiles `step` x patch apart) that holds
    the preprocessed voxel `query` nearest to its centre, where nnU-Net's Gaussian weighting trusts it most, and the
    network's input there, (1, C, *patch_size). data (C, Z, Y, X)."""
    padded, unpad = pad_nd_image(torch.from_numpy(data), tuple(patch_size), "constant", {"value": 0}, True, None)
    patch_axes = range(4 - len(patch_size), 4)  # the data axes the patch spans
    offsets = [int(unpad[axis].start or 0) for axis in patch_axes]
    in_padded = [query[axis - 1] + offset for axis, offset in zip(patch_axes, offsets)]
    steps = compute_steps_for_sliding_window(tuple(padded.shape[axis] for axis in patch_axes), tuple(patch_size),
                                             step)
    # per axis, the tile start nearest the query: the tiles are a grid, so nearest per axis is nearest overall
    starts = [min((s for s in axis_steps if s <= q < s + size), key=lambda s: abs(s + size / 2 - q - 0.5))
              for axis_steps, q, size in zip(steps, in_padded, patch_size)]
    window = tuple(slice(s, s + size) for s, size in zip(starts, patch_size))
    if len(patch_size) == 2:  # a 2D network sees one slice
        window = (query[0], *window)
    tile = Tile(slice_z=query[0] if len(patch_size) == 2 else None, start=tuple(s - o for s, o in zip(starts, offsets)),
                size=tuple(patch_size), query=tuple(q - s for q, s in zip(in_padded, starts)))
    return tile, padded[(slice(None), *window)][None].contiguous()


def check_query(query: Sequence[int], image_shape: Sequence[int]) -> tuple[int, ...]:
    """The query as (z, y, x) image voxels: Y X are taken for images of one slice. Refuses one outside the image."""
    if len(query) == 2 and image_shape[0] == 1:
        query = (0, *query)
    if len(query) != 3:
        raise AttentionError(f"--query takes three voxel indices Z Y X (two, Y X, for a 2D image), got {len(query)}")
    if any(not 0 <= q < size for q, size in zip(query, image_shape)):
        raise AttentionError(f"--query {' '.join(map(str, query))} is outside the image, whose voxels run from 0 0 0 "
                             f"to {' '.join(str(size - 1) for size in image_shape)} (Z Y X)")
    return tuple(int(q) for q in query)


def cut_to_tile(volume: np.ndarray, tile: Tile) -> np.ndarray:
    """A (Z, Y, X) volume in preprocessed voxels cut to the tile: (*patch), the tile's slice for a 2D configuration;
    zero where the tile lies outside the volume (nnU-Net's padding)."""
    if tile.slice_z is not None:
        volume = volume[tile.slice_z]
    cut = np.zeros(tile.size, dtype=volume.dtype)
    source = tuple(slice(max(s, 0), min(s + size, length)) for s, size, length in zip(tile.start, tile.size,
                                                                                       volume.shape))
    target = tuple(slice(src.start - s, src.stop - s) for src, s in zip(source, tile.start))
    cut[target] = volume[source]
    return cut
