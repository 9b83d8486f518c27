"""A small synthetic task in the Medical Segmentation Decathlon layout, for the demo and the tests.

Each case is a 4D NIfTI with two modalities and a 3D label map with three foreground labels, like the
Decathlon's brain tumour task: a lesion with a core inside it, and a separate cyst. Every label has its own
mean intensity per modality and the images carry Gaussian noise, so a U-Net learns the task in a few
hundred iterations. MSD ships no test labels; ours go to `labelsTs/`, which `nnUNetv2_convert_MSD_dataset`
ignores, so predictions on `imagesTs/` can be scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

MODALITIES = {"0": "T1w", "1": "T2w"}
LABELS = {"0": "background", "1": "lesion", "2": "core", "3": "cyst"}
# Mean intensity of each label (row) in each modality (column). Lesion and core differ only in T2w and
# lesion and cyst only in sign, so the network has to use both channels.
MEANS = np.array([[0.0, 0.0], [1.0, 0.5], [1.0, 1.5], [-1.0, 0.5]], dtype=np.float32)
NOISE = 0.35
SPACING = (0.8, 0.8, 2.0)  # x, y, z in mm: anisotropic like most MR, so resampling is a no-op but visible


@dataclass(frozen=True)
class SyntheticTask:
    """Where a written task lies and the names nnU-Net will give it."""

    folder: Path  # TaskXXX_Name, the folder `nnUNetv2_convert_MSD_dataset -i` takes
    task_id: int

    @classmethod
    def at(cls, parent: Path, task_id: int, name: str) -> SyntheticTask:
        """The task `write_msd_task(parent, task_id, name)` writes."""
        if "_" in name:
            raise ValueError(f"MSD task names have no underscore (nnU-Net splits TaskXXX_Name at it): {name!r}")
        return cls(Path(parent) / f"Task{task_id:03d}_{name}", task_id)

    @property
    def dataset_name(self) -> str:
        """The name `nnUNetv2_convert_MSD_dataset` gives the converted dataset."""
        return f"Dataset{self.task_id:03d}_{self.folder.name.split('_', 1)[1]}"

    @property
    def test_labels(self) -> Path:
        """Reference segmentations of `imagesTs/`, named like nnU-Net names its predictions."""
        return self.folder / "labelsTs"


def _paint_ellipsoid(labels: np.ndarray, grid: np.ndarray, center: np.ndarray, radii: np.ndarray, value: int) -> None:
    """Sets `value` inside the ellipsoid; `grid` holds each voxel's physical (z, y, x) position."""
    inside = (((grid - center[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
    labels[inside] = value


def _synthesize_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One case: images (2, z, y, x) float32 and labels (z, y, x) uint8, with shapes varying around `shape`."""
    shape = tuple(int(round(s * rng.uniform(0.85, 1.15))) for s in shape)
    spacing_zyx = np.array(SPACING[::-1])
    extent = np.array(shape) * spacing_zyx
    grid = np.stack(np.meshgrid(*[np.arange(s) * sp for s, sp in zip(shape, spacing_zyx)], indexing="ij"))
    labels = np.zeros(shape, dtype=np.uint8)
    for _ in range(rng.integers(1, 3)):
        center = rng.uniform(0.3, 0.7, 3) * extent
        radii = rng.uniform(0.22, 0.32, 3) * extent.min()
        _paint_ellipsoid(labels, grid, center, radii, 1)
        _paint_ellipsoid(labels, grid, center, radii * 0.5, 2)
    cyst_center = rng.uniform(0.15, 0.85, 3) * extent
    _paint_ellipsoid(labels, grid, cyst_center, rng.uniform(0.12, 0.18, 3) * extent.min(), 3)
    images = MEANS[labels].transpose(3, 0, 1, 2) + rng.normal(0, NOISE, (2, *shape)).astype(np.float32)
    return images * 100 + 300, labels  # MR-like values; nnU-Net z-scores them anyway


def _image(array: np.ndarray, origin: tuple[float, float, float]) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(origin)
    return image


def write_msd_task(parent: Path, task_id: int = 101, name: str = "Blobs", num_training: int = 12,
                   num_test: int = 4, shape: tuple[int, int, int] = (10, 56, 48), seed: int = 0) -> SyntheticTask:
    """Writes `parent/TaskXXX_Name` in the Decathlon layout and returns where it is.

    `shape` is the typical (z, y, x) size of a case; each case varies by up to 15% per axis, and each has
    its own origin, so the tests can check that predictions keep every case's geometry.
    """
    task = SyntheticTask.at(parent, task_id, name)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (task.folder / sub).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    cases = [f"{name.lower()}_{i:03d}" for i in range(num_training + num_test)]
    for i, case in enumerate(cases):
        images, labels = _synthesize_case(rng, shape)
        origin = tuple(float(o) for o in rng.uniform(-50, 50, 3))
        image_4d = sitk.JoinSeries([_image(channel, origin) for channel in images])
        image_4d.SetOrigin((*origin, 0.0))
        split = "Tr" if i < num_training else "Ts"
        sitk.WriteImage(image_4d, str(task.folder / f"images{split}" / f"{case}.nii.gz"))
        sitk.WriteImage(_image(labels, origin), str(task.folder / f"labels{split}" / f"{case}.nii.gz"))
    dataset = {
        "name": name,
        "description": "Synthetic two-modality blobs written by nnunet_dca.msd",
        "reference": "nnunet-dca",
        "licence": "CC0",
        "tensorImageSize": "4D",
        "modality": MODALITIES,
        "labels": LABELS,
        "numTraining": num_training,
        "numTest": num_test,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                     for c in cases[:num_training]],
        "test": [f"./imagesTs/{c}.nii.gz" for c in cases[num_training:]],
    }
    (task.folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return task
