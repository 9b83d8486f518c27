"""One case, read and preprocessed as nnU-Net preprocesses it for prediction, and the map between its image voxels and
the voxels the network sees (after the plans' transpose, the crop to the nonzero region and the resampling)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_dca.attention.model import AttentionError


@dataclass(frozen=True)
class VoxelMap:
    """Image voxels (z, y, x as the plans' image reader reads them) to the preprocessed voxels the network sees, and
    back. Resampling maps voxel centres: p = (c + 0.5) * new / old - 0.5."""

    transpose: tuple[int, ...]  # the plans' transpose_forward
    crop_start: tuple[int, ...]  # the nonzero bounding box, after the transpose
    cropped_shape: tuple[int, ...]
    network_shape: tuple[int, ...]

    def to_network(self, voxel: Sequence[float]) -> tuple[int, ...]:
        """The preprocessed voxel of an image voxel; AttentionError if the crop removed it."""
        cropped = [voxel[axis] - start for axis, start in zip(self.transpose, self.crop_start)]
        if any(not 0 <= c < size for c, size in zip(cropped, self.cropped_shape)):
            raise AttentionError(f"the query {list(voxel)} lies where every channel of the image is zero, which "
                                 f"nnU-Net crops away before the network sees it; pick a voxel inside the image's "
                                 f"nonzero region")
        return tuple(int(np.clip(round((c + 0.5) * new / old - 0.5), 0, new - 1))
                     for c, old, new in zip(cropped, self.cropped_shape, self.network_shape))

    def to_image(self, voxel: Sequence[float]) -> tuple[float, ...]:
        """The image voxel (fractional) of a preprocessed voxel."""
        transposed = [(p + 0.5) * old / new - 0.5 + start for p, old, new, start
                      in zip(voxel, self.cropped_shape, self.network_shape, self.crop_start)]
        image = [0.0] * len(transposed)
        for axis, value in zip(self.transpose, transposed):
            image[axis] = round(value, 2)
        return tuple(image)


@dataclass
class Case:
    """A case as the network sees it. data (C, Z, Y, X) float32; reference (Z, Y, X) int or None."""

    name: str
    images: list[Path]
    image_shape: tuple[int, ...]  # (z, y, x) as read
    data: np.ndarray
    reference: np.ndarray | None
    voxels: VoxelMap


def read_case(images: Sequence[str | Path], label: str | Path | None, plans_manager: PlansManager,
              configuration_manager: ConfigurationManager, dataset_json: dict) -> Case:
    """Reads a case's files (one per channel, named as in imagesTs) and its reference segmentation, if given, with
    the plans' image reader, and preprocesses them as nnU-Net does. Refuses, in one line, missing or unreadable
    files, another file ending, the wrong number of channels and an image of another dimensionality than the
    dataset's."""
    images = [Path(image) for image in images]
    ending = dataset_json["file_ending"]
    for path in [*images, *([Path(label)] if label else [])]:
        if not path.is_file():
            raise AttentionError(f"no such file: {path}")
        if not path.name.endswith(ending):
            raise AttentionError(f"{path} is not a {ending} file, as the dataset's images are; convert it, or give "
                                 f"the case's {ending} files")
    reader = plans_manager.image_reader_writer_class()
    arrays = [_read(reader, [path]) for path in images]
    channel_names = dataset_json.get("channel_names", dataset_json.get("modality"))
    expected = [f"_{int(key):04d}{ending} ({name})" for key, name in channel_names.items()]
    if sum(array.shape[0] for array, _ in arrays) != len(channel_names):
        raise AttentionError(f"the model takes {len(channel_names)} channel(s), one file each, named CASE"
                             f"{', CASE'.join(expected)}; got {len(images)} file(s) holding "
                             f"{sum(array.shape[0] for array, _ in arrays)}: give the case's files, in that order")
    shapes = {path.name: array.shape[1:] for path, (array, _) in zip(images, arrays)}
    if len(set(shapes.values())) > 1:
        raise AttentionError(f"the files of one case must have one shape; got {shapes}")
    image_shape = tuple(arrays[0][0].shape[1:])
    dataset_is_2d = plans_manager.plans["original_median_shape_after_transp"][0] == 1
    if dataset_is_2d != (image_shape[0] == 1):
        raise AttentionError(f"{images[0]} is a {2 if image_shape[0] == 1 else 3}D image (shape {list(image_shape)}) "
                             f"and the model was trained on {2 if dataset_is_2d else 3}D images; give an image of the "
                             f"kind the dataset holds")
    data, properties = _read(reader, images)
    seg = None
    if label:
        seg, _ = _read(reader, [Path(label)], reading="the reference segmentation")
        if seg.shape[1:] != data.shape[1:]:
            raise AttentionError(f"the reference {label} has shape {list(seg.shape[1:])} and the image "
                                 f"{list(data.shape[1:])}; give the case's own segmentation")
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    with contextlib.redirect_stdout(io.StringIO()):
        data, seg, properties = preprocessor.run_case_npy(data, seg, properties, plans_manager, configuration_manager,
                                                          dataset_json)
    voxels = VoxelMap(tuple(plans_manager.transpose_forward), tuple(int(lo) for lo, _ in properties["bbox_used_for_cropping"]),
                      tuple(properties["shape_after_cropping_and_before_resampling"]), tuple(data.shape[1:]))
    # outside the nonzero region nnU-Net marks the reference -1; there is no label there
    reference = np.maximum(seg[0], 0) if label else None
    return Case(_case_name(images[0], ending), images, image_shape, data, reference, voxels)


def _read(reader: object, paths: list[Path], reading: str = "the image") -> tuple[np.ndarray, dict]:
    try:
        with contextlib.redirect_stdout(io.StringIO()) as said:  # the readers print their complaints
            return reader.read_images([str(path) for path in paths])
    except Exception as e:  # the readers raise what their libraries raise, some with no message at all
        complaint = " ".join(said.getvalue().split()) or str(e) or type(e).__name__
        raise AttentionError(f"cannot read {reading} {', '.join(map(str, paths))} with {type(reader).__name__} "
                             f"(the plans' image reader): {complaint}") from e


def _case_name(first_image: Path, ending: str) -> str:
    """CASE of CASE_0000.nii.gz, as nnU-Net names a case after its files."""
    stem = first_image.name.removesuffix(ending)
    return stem[:-5] if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit() else stem
