"""The ISBI 2012 EM membrane set (../shared/data/isbi2012-em, real data no one here made) as an nnU-Net raw dataset.

30 serial sections of 512 x 512 pixels, each a PNG image and a PNG label (255 cell interior, 0 membrane). nnU-Net
reads 2D PNGs with its natural-image reader; labels must count up from 0, so membrane becomes 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from PIL import Image

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012-em"
MEMBRANE = 0  # the label PNGs' value for membrane pixels


def write_isbi_dataset(raw: Path, dataset_id: int) -> str:
    """Writes nnUNet_raw/DatasetXXX_ISBI2012EM (imagesTr, labelsTr, dataset.json); returns the dataset's name."""
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
                          converted_by="nnunet-dca tests")
    return name
