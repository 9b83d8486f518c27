"""One case, read and preprocessed as nnU-Net preprocesses it for prediction, and the map between its image voxels and
the voxels the network sees (after the plans' transpose, the crop to the nonzero region and the resampling)."""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
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
    channel_names: list[str]  # dataset.json's, in channel order
    image_shape: tuple[int, ...]  # (z, y, x) as read
    data: np.ndarray
    reference: np.ndarray | None
    voxels: VoxelMap


def find_cases(inputs: Sequence[str | Path], dataset_json: dict) -> dict[str, list[Path]]:
    """The files of each case, by case name, from what -i takes: one case's files, a folder of images as
    `nnUNetv2_predict -i` takes it, or the files of several cases. Files are grouped by name, CASE of CASE_0000.ext,
    as nnU-Net groups them (a folder's in sorted order, given files in the order given: read_case refuses channels
    out of order). Refuses, in one line, a path that does not exist, a folder among other paths, a folder without
    images, a file of another ending and a case missing a channel or holding one the model does not take."""
    ending = dataset_json["file_ending"]
    paths = [Path(path) for path in inputs]
    for path in paths:
        if not path.exists():
            raise AttentionError(f"no such file or folder: {path}")
    if any(path.is_dir() for path in paths):
        if len(paths) > 1:
            raise AttentionError(f"-i takes one folder of images or a list of files, got {len(paths)} paths with a "
                                 f"folder among them; give the folder alone")
        folder = paths[0]
        # nnU-Net's create_lists_from_splitted_dataset_folder groups the same way, but takes every name to carry a
        # channel suffix (it cuts five characters off blindly) and starts a process pool for it
        paths = sorted(path for path in folder.iterdir() if path.is_file() and path.name.endswith(ending))
        if not paths:
            raise AttentionError(f"{folder} holds no {ending} files; give a folder of images named as in imagesTs "
                                 f"(CASE_0000{ending} ...), as nnUNetv2_predict -i takes")
    cases: dict[str, list[Path]] = {}
    for path in paths:
        if not path.name.endswith(ending):
            raise AttentionError(f"{path} is not a {ending} file, as the dataset's images are; convert it, or give "
                                 f"the case's {ending} files")
        cases.setdefault(_case_name(path, ending), []).append(path)
    channels = len(dataset_json.get("channel_names", dataset_json.get("modality")))
    for name, files in cases.items():
        suffixes = {_channel_suffix(path, ending) for path in files}
        if None in suffixes:  # a name without a channel suffix: read_case counts the channels it holds
            continue
        missing = sorted(set(range(channels)) - suffixes)
        extra = sorted(suffixes - set(range(channels)))
        if missing or extra:
            problem = f"has no {name}_{missing[0]:04d}{ending}" if missing else f"has {name}_{extra[0]:04d}{ending}"
            raise AttentionError(f"case {name} {problem}: the model takes {channels} channel(s), "
                                 f"{_expected_channels(dataset_json)}, as in imagesTs")
    return cases


def find_references(label: str | Path | None, names: Sequence[str], ending: str) -> dict[str, Path | None]:
    """Each case's reference segmentation from --label: a file (one case) or a folder of CASE.ext files, where a
    case without one is drawn without a reference. A file for several cases is refused."""
    if label is None:
        return {name: None for name in names}
    label = Path(label)
    if label.is_dir():
        return {name: label / f"{name}{ending}" if (label / f"{name}{ending}").is_file() else None for name in names}
    if len(names) > 1:
        raise AttentionError(f"--label {label} is one case's reference, and -i holds {len(names)} cases; give a "
                             f"folder of references named CASE{ending}")
    return {names[0]: label}  # read_case refuses one that does not exist


def read_case(images: Sequence[str | Path], label: str | Path | None, plans_manager: PlansManager,
              configuration_manager: ConfigurationManager, dataset_json: dict) -> Case:
    """Reads a case's files (named as in imagesTs, CASE_0000 ...) and its reference segmentation, if given, with the
    plans' image reader, and preprocesses them as nnU-Net does: the image as for prediction, the reference as for
    training. Refuses, in one line, missing or unreadable files, another file ending, channels missing, extra or out
    of order, an image of another dimensionality than the dataset's and a reference with values that are no label."""
    images = [Path(image) for image in images]
    ending = dataset_json["file_ending"]
    for path in [*images, *([Path(label)] if label else [])]:
        if not path.is_file():
            raise AttentionError(f"no such file: {path}")
        if not path.name.endswith(ending):
            raise AttentionError(f"{path} is not a {ending} file, as the dataset's images are; convert it, or give "
                                 f"the case's {ending} files")
    channel_names = dataset_json.get("channel_names", dataset_json.get("modality"))
    expected = _expected_channels(dataset_json)
    suffixes = [_channel_suffix(path, ending) for path in images]
    if None not in suffixes and suffixes != list(range(len(images))):
        raise AttentionError(f"the files are channels {', '.join(f'_{s:04d}' for s in suffixes)}; give the case's "
                             f"files in channel order: {expected}")
    reader = plans_manager.image_reader_writer_class()
    image, properties = _read(reader, images)
    if image.shape[0] != len(channel_names):
        raise AttentionError(f"the model takes {len(channel_names)} channel(s), {expected}, as in imagesTs; got "
                             f"{len(images)} file(s) holding {image.shape[0]}")
    image_shape = tuple(image.shape[1:])
    dataset_is_2d = plans_manager.plans["original_median_shape_after_transp"][0] == 1
    if dataset_is_2d != (image_shape[0] == 1):
        raise AttentionError(f"{images[0]} is a {2 if image_shape[0] == 1 else 3}D image (shape {list(image_shape)}) "
                             f"and the model was trained on {2 if dataset_is_2d else 3}D images; give an image of the "
                             f"kind the dataset holds")
    data, _, after = _preprocess(image, None, properties, plans_manager, configuration_manager, dataset_json)
    reference = None
    if label:
        segmentation = _read_reference(reader, Path(label), image_shape, dataset_json["labels"])
        # preprocessed as for training, apart from the image, which the reference must not change; the crop marks
        # what lies outside the nonzero region -1, and there is no label there
        _, reference, _ = _preprocess(image, segmentation, properties, plans_manager, configuration_manager,
                                      dataset_json)
        reference = np.maximum(reference[0], 0)
    voxels = VoxelMap(tuple(plans_manager.transpose_forward),
                      tuple(int(lo) for lo, _ in after["bbox_used_for_cropping"]),
                      tuple(after["shape_after_cropping_and_before_resampling"]), tuple(data.shape[1:]))
    return Case(_case_name(images[0], ending), images, list(channel_names.values()), image_shape, data, reference,
                voxels)


def _expected_channels(dataset_json: dict) -> str:
    """"_0000 (T1w), _0001 (T2w)": the model's channels as imagesTs names them."""
    channel_names = dataset_json.get("channel_names", dataset_json.get("modality"))
    return ", ".join(f"_{int(key):04d} ({name})" for key, name in channel_names.items())


def _read(reader: BaseReaderWriter, paths: list[Path], reading: str = "the image") -> tuple[np.ndarray, dict]:
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):  # the readers print their complaints and warnings
            array, properties = (reader.read_images([str(path) for path in paths]) if reading == "the image"
                                 else reader.read_seg(str(paths[0])))
    except Exception as e:  # the readers raise what their libraries raise, some with no message at all
        complaint = " ".join(said.getvalue().split()) or str(e) or type(e).__name__
        raise AttentionError(f"cannot read {reading} {', '.join(map(str, paths))} with {type(reader).__name__} "
                             f"(the plans' image reader): {complaint}") from e
    if said.getvalue().strip():  # the warning of a read that worked, e.g. channels of different origins
        print(f"{type(reader).__name__}: {' '.join(said.getvalue().split())}", file=sys.stderr)
    return array, properties


def _read_reference(reader: BaseReaderWriter, label: Path, image_shape: tuple[int, ...],
                    labels: dict[str, int | list[int]]) -> np.ndarray:
    """The reference segmentation (1, Z, Y, X), checked against the image's shape and the dataset's label values."""
    segmentation, _ = _read(reader, [label], reading="the reference segmentation")
    if segmentation.shape[1:] != image_shape:
        raise AttentionError(f"the reference {label} has shape {list(segmentation.shape[1:])} and the image "
                             f"{list(image_shape)}; give the case's own segmentation")
    known = {value for entry in labels.values() for value in (entry if isinstance(entry, (list, tuple)) else [entry])}
    # the readers return floats; 127.0 is shown as 127
    unknown = [int(v) if float(v).is_integer() else v for v in sorted(set(np.unique(segmentation).tolist()) - known)]
    if unknown:
        raise AttentionError(f"the reference {label} holds values {unknown[:5]} that are no label of the dataset "
                             f"(its labels: {sorted(known)}); give a segmentation with the dataset's labels")
    return segmentation


def _preprocess(image: np.ndarray, segmentation: np.ndarray | None, properties: dict, plans_manager: PlansManager,
                configuration_manager: ConfigurationManager, dataset_json: dict
                ) -> tuple[np.ndarray, np.ndarray, dict]:
    """nnU-Net's preprocessing (its run_case_npy), on copies: the image (C, Z, Y, X), the segmentation (1, Z, Y, X;
    without one, the nonzero mask nnU-Net makes) and the properties after it."""
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    with contextlib.redirect_stdout(io.StringIO()):
        return preprocessor.run_case_npy(image, segmentation, dict(properties), plans_manager, configuration_manager,
                                         dataset_json)


def _channel_suffix(path: Path, ending: str) -> int | None:
    """0 for CASE_0000.nii.gz; None for a name without a channel suffix."""
    stem = path.name.removesuffix(ending)
    return int(stem[-4:]) if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit() else None


def _case_name(first_image: Path, ending: str) -> str:
    """CASE of CASE_0000.nii.gz, as nnU-Net names a case after its files."""
    stem = first_image.name.removesuffix(ending)
    return stem[:-5] if _channel_suffix(first_image, ending) is not None else stem
