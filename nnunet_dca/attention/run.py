"""`nnunet-dca attention`: load, read, predict, pick the query and its tile, record DCA there, write the pictures,
attention.json and attention.npz."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from nnunet_dca.attention import figures
from nnunet_dca.attention.case import Case, read_case
from nnunet_dca.attention.model import AttentionError, Model, load_model
from nnunet_dca.attention.record import arrays, record_tile, summary
from nnunet_dca.attention.tile import centroid, check_query, label_values, tile_around

PICTURES = {"overview": "overview.png", "spatial_attention": "spatial_attention.png",
            "channel_attention": "channel_attention.png", "skip_change": "skip_change.png"}
WRITTEN = ("attention.json", "attention.npz", *PICTURES.values())


@dataclass(frozen=True)
class Request:
    """What the user asked for: the model (as nnUNetv2_predict names it), the case's files, the query, where to."""

    dataset: str
    configuration: str
    trainer: str
    plans: str
    fold: str
    checkpoint: str
    images: Sequence[str]
    out: Path
    query: Sequence[int] | None = None
    query_label: str | None = None
    label: str | None = None
    device: str = "cpu"
    overwrite: bool = False


def run_attention(request: Request) -> dict[str, Any]:
    """Writes the pictures, attention.json and attention.npz of one case into request.out; returns attention.json's
    content. Raises AttentionError (a ValueError) with one line for input it cannot use."""
    out = Path(request.out)
    existing = [name for name in WRITTEN if (out / name).exists()]
    if existing and not request.overwrite:
        raise AttentionError(f"{out} already holds {', '.join(existing)}; give another -o, or --overwrite")
    model = load_model(request.dataset, request.configuration, request.trainer, request.plans, request.fold,
                       request.checkpoint, request.device)
    predictor = model.predictor
    labels = predictor.dataset_json["labels"]
    wanted = label_values(request.query_label, labels) if request.query_label is not None else None
    case = read_case(request.images, request.label, predictor.plans_manager, predictor.configuration_manager,
                     predictor.dataset_json)
    image_query = check_query(request.query, case.image_shape) if request.query is not None else None
    network_query = case.voxels.to_network(image_query) if image_query is not None else None

    prediction = _predict(model, case)
    if network_query is None:
        network_query = centroid(prediction, wanted)
        if network_query is None:
            what = f"label {request.query_label}" if wanted is not None else "any foreground"
            raise AttentionError(f"the model predicts no {what} in {case.name}; give --query Z Y X")
        image_query = case.voxels.to_image(network_query)
    tile, tile_input = tile_around(case.data, predictor.configuration_manager.patch_size, network_query,
                                   predictor.tile_step_size)
    record = record_tile(model, tile, tile_input)
    stages = summary(record, model.dca.features)

    out.mkdir(parents=True, exist_ok=True)
    source = f"{case.name}, {model.folder.name} fold {model.fold}"
    figures.overview(out / PICTURES["overview"], case.data, case.channel_names, prediction, case.reference, tile,
                     network_query, f"the slice through the query\n{source}")
    figures.spatial_attention(out / PICTURES["spatial_attention"], record, tile, figures.tile_slice(tile_input, tile),
                              f"spatial attention of the query token\n{source}")
    figures.channel_attention(out / PICTURES["channel_attention"], record, model.dca.features,
                              f"channel attention (rows: a stage's channels)\n{source}")
    figures.skip_changes(out / PICTURES["skip_change"], record, tile, stages,
                         f"|refined skip - skip|, mean over channels\n{source}")
    np.savez_compressed(out / "attention.npz", **arrays(record))
    result = {
        "case": case.name,
        "images": [str(path) for path in case.images],
        "label": str(request.label) if request.label else None,
        "model": {"folder": str(model.folder), "trainer": request.trainer, "plans": request.plans,
                  "configuration": request.configuration, "fold": model.fold, "checkpoint": model.checkpoint},
        "device": request.device,
        "query": {"from": ("--query" if request.query is not None else
                           f"--query-label {request.query_label}" if wanted is not None else "predicted foreground"),
                  "image_voxel": list(image_query), "preprocessed_voxel": list(network_query),
                  "tile_voxel": list(tile.query), "token": list(record.query_token),
                  "token_index": record.query_index},
        "tile": {"slice": tile.slice_z, "start": list(tile.start), "size": list(tile.size)},
        "preprocessed_shape": list(case.data.shape[1:]),
        "token_grid": list(record.grid),
        "stages": stages,
        "pictures": PICTURES,
    }
    (out / "attention.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _predict(model: Model, case: Case) -> np.ndarray:
    """The model's segmentation of the case in preprocessed voxels (Z, Y, X), as nnUNetv2_predict computes it
    (sliding window, Gaussian weighting, mirroring as the model was trained) before resampling it back."""
    predictor = model.predictor
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(case.data))
    segmentation = predictor.label_manager.convert_logits_to_segmentation(logits.float())
    return np.asarray(segmentation.cpu() if isinstance(segmentation, torch.Tensor) else segmentation)
