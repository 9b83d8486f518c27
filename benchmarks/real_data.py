"""Real data no one here made, from ../shared/data beside the repository, as nnU-Net datasets.

- `isbi2012-em`: the ISBI 2012 EM membranes, 30 serial sections of 512 x 512 pixels, each a PNG image and a PNG
  label (255 cell interior, 0 membrane). nnU-Net reads 2D PNGs with its natural-image reader; labels must count up
  from 0, so membrane becomes 1.
- `msd-hippocampus`: 100 real training cases of MSD Task04 Hippocampus in the Decathlon's layout, converted by
  nnU-Net's own `nnUNetv2_convert_MSD_dataset`.

Both are planned and preprocessed by nnU-Net's own `nnUNetv2_plan_and_preprocess`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ISBI = SHARED_DATA / "isbi2012-em"
HIPPOCAMPUS = SHARED_DATA / "msd-hippocampus" / "Task04_Hippocampus"
MEMBRANE = 0  # the label PNGs' value for membrane pixels
# dataset ids far from the MSD's and the tests' own
DATASET_IDS = {"msd-hippocampus": 904, "isbi2012-em": 912}


def write_isbi_dataset(raw: Path, dataset_id: int) -> str:
    """Writes nnUNet_raw/DatasetXXX_ISBI2012EM (imagesTr, labelsTr, dataset.json); returns the dataset's name."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    name = f"Dataset{dataset_id:03d}_ISBI2012EM"
    images, labels = raw / name / "imagesTr", raw / name / "labelsTr"
    images.mkdir(parents=True)
    labels.mkdir()
    sections = sorted(ISBI.joinpath("images").glob("*.png"), key=lambda path: int(path.stem))
    for section in sections:
        case = f"em_{int(section.stem):03d}"
        Image.open(section).save(images / f"{case}_0000.png")
        label = np.asarray(Image.open(ISBI / "labels" / section.name))
        Image.fromarray((label == MEMBRANE).astype(np.uint8)).save(labels / f"{case}.png")
    generate_dataset_json(str(raw / name), {0: "EM"}, {"background": 0, "membrane": 1}, len(sections), ".png",
                          dataset_name=name, reference="ISBI 2012 EM segmentation challenge, training set",
                          license="research use, citing Cardona et al. 2010 and Arganda-Carreras et al. 2015",
                          converted_by="nnunet-dca")
    return name


def write_hippocampus_dataset(raw: Path, dataset_id: int) -> str:
    """Converts the Task04 cases with nnUNetv2_convert_MSD_dataset into nnUNet_raw; returns the dataset's name.

    The shared copy holds training cases only, and the converter insists on an imagesTs folder: it reads a task
    folder of links to the shared files beside an empty imagesTs, made under nnUNet_raw and removed afterwards.
    """
    task = raw / "msd_source" / HIPPOCAMPUS.name
    (task / "imagesTs").mkdir(parents=True)
    for entry in ("imagesTr", "labelsTr", "dataset.json"):
        (task / entry).symlink_to(HIPPOCAMPUS / entry)
    try:
        _nnunet("nnUNetv2_convert_MSD_dataset", "-i", task, "-overwrite_id", dataset_id, "-np", 2)
    finally:
        shutil.rmtree(raw / "msd_source")
    return f"Dataset{dataset_id:03d}_Hippocampus"


WRITERS = {"msd-hippocampus": (HIPPOCAMPUS, write_hippocampus_dataset), "isbi2012-em": (ISBI, write_isbi_dataset)}


def prepare(name: str, configuration: str) -> str:
    """The shared dataset `name` converted, planned and preprocessed for `configuration` in nnUNet_raw and
    nnUNet_preprocessed, unless that was done before; returns its dataset name. Exits with one line if the shared
    data is absent."""
    source, write = WRITERS[name]
    if not source.exists():
        sys.exit(f"the real data {name!r} is not at {source} (it lives in ../shared/data beside the repository)")
    dataset_id = DATASET_IDS[name]
    raw, preprocessed = Path(os.environ["nnUNet_raw"]), Path(os.environ["nnUNet_preprocessed"])
    existing = sorted(raw.glob(f"Dataset{dataset_id:03d}_*"))
    dataset = existing[0].name if existing else write(raw, dataset_id)
    plans = preprocessed / dataset / "nnUNetPlans.json"
    if not (plans.is_file() and any((preprocessed / dataset).glob(f"nnUNetPlans_{configuration}"))):
        _nnunet("nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", configuration, "-np", 2, "-npfp", 2)
    return dataset


def _nnunet(command: str, *arguments: object) -> None:
    executable = Path(sys.executable).with_name(command)
    subprocess.run([str(executable if executable.exists() else command), *map(str, arguments)], check=True,
                   stdout=subprocess.DEVNULL)
