"""`nnunet-dca attention`: load the model, find the cases, and per case read, predict, pick the query and its tile,
record DCA there, write the pictures, attention.json and attention.npz; then the attention statistics over every
case, attention_summary.json and attention_summary.png."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from nnunet_dca.attention import figures
from nnunet_dca.attention.case import Case, find_cases, find_references, read_case
from nnunet_dca.attention.model import AttentionError, Model, load_model
from nnunet_dca.attention.record import arrays, record_tile, summary
from nnunet_dca.attention.statistics import attention_rows, joined_rows, summarize, target_checks
from nnunet_dca.attention.tile import centroid, check_query, cut_to_tile, label_values, tile_around

PICTURES = {"overview": "overview.png", "spatial_attention": "spatial_attention.png",
            "channel_attention": "channel_attention.png", "skip_change": "skip_change.png"}
WRITTEN = ("attention.json", "attention.npz", *PICTURES.values())  # per case
SUMMARY = ("attention_summary.json", "attention_summary.png")  # in OUT, over every case
IMAGE_CENTRE = "the image's centre"  # the query of a case without the foreground it looks for


@dataclass(frozen=True)
class Request:
    """What the user asked for: the model (as nnUNetv2_predict names it), the cases (one case's files, a folder of
    images or the files of several cases), the query, the references (a file, or a folder of CASE.ext), where to."""

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


@dataclass
class Result:
    """attention_summary.json's content, and each case's attention.json, in the order of summary["cases"]."""

    summary: dict[str, Any]
    cases: list[dict[str, Any]]


@dataclass
class _CaseResult:
    attention: dict[str, Any]  # attention.json's content
    rows: list[list[dict[str, Any]]]  # statistics.attention_rows over the query's tile
    foreground: bool  # whether the model predicts the foreground the query looks for


def run_attention(request: Request) -> Result:
    """One case: its files in request.out. Several: each case's in request.out/CASE. attention_summary.json and
    .png in request.out. Raises AttentionError (a ValueError) with one line for input it cannot use, before writing
    anything where it can tell (not a case that cannot be read after earlier cases were written)."""
    model = load_model(request.dataset, request.configuration, request.trainer, request.plans, request.fold,
                       request.checkpoint, request.device)
    dataset_json = model.predictor.dataset_json
    cases = find_cases(request.images, dataset_json)
    if request.query is not None and len(cases) > 1:
        raise AttentionError(f"--query Z Y X names a voxel of one case, and -i holds {len(cases)} cases; use "
                             f"--query-label L, or neither for the centroid of the predicted foreground")
    references = find_references(request.label, list(cases), dataset_json["file_ending"])
    wanted = (label_values(request.query_label, dataset_json["labels"]) if request.query_label is not None
              else None)
    out = Path(request.out)
    folders = {name: out / name if len(cases) > 1 else out for name in cases}
    existing = [path.relative_to(out).as_posix() for path in
                [*(folders[name] / file for name in cases for file in WRITTEN), *(out / file for file in SUMMARY)]
                if path.exists()]
    if existing and not request.overwrite:
        shown = ", ".join(existing[:4]) + (f" and {len(existing) - 4} more" if len(existing) > 4 else "")
        raise AttentionError(f"{out} already holds {shown}; give another -o, or --overwrite")

    results = [_run_case(model, request, wanted, files, references[name], folders[name])
               for name, files in cases.items()]
    rows = [result.rows for result in results]
    statistics = summarize(rows)
    attention = results[0].attention
    summary_json = {
        "model": attention["model"],
        "device": request.device,
        "cases": [{"name": result.attention["case"], "folder": name if len(cases) > 1 else None,
                   "foreground": result.foreground, "query_from": result.attention["query"]["from"]}
                  for name, result in zip(cases, results)],
        "statistics": statistics,
        "targets": target_checks(statistics),
        "cases_without_foreground": [result.attention["case"] for result in results if not result.foreground],
    }
    what = f"{len(cases)} cases" if len(cases) > 1 else attention["case"]
    figures.attention_summary(out / SUMMARY[1], joined_rows(rows), statistics,
                              f"attention over every row of {what}\n{model.folder.name} fold {model.fold}")
    (out / SUMMARY[0]).write_text(json.dumps(summary_json, indent=2) + "\n")
    return Result(summary_json, [result.attention for result in results])


def _run_case(model: Model, request: Request, wanted: tuple[int, ...] | None, images: list[Path],
              label: Path | None, out: Path) -> _CaseResult:
    """One case's pictures, attention.json and attention.npz in `out`; wanted: the values of --query-label."""
    predictor = model.predictor
    case = read_case(images, label, predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json)
    image_query = check_query(request.query, case.image_shape) if request.query is not None else None
    network_query = case.voxels.to_network(image_query) if image_query is not None else None

    prediction = _predict(model, case)
    # the foreground the query looks for: label L's values with --query-label, else every predicted label
    foreground = np.isin(prediction, wanted) if wanted is not None else prediction > 0
    has_foreground = bool(foreground.any())
    query_from = ("--query" if request.query is not None else f"--query-label {request.query_label}"
                  if wanted is not None else "predicted foreground")
    if network_query is None:
        if has_foreground:
            network_query = centroid(prediction, wanted)
        else:  # a case without it still gets its pictures and statistics: the run goes on to the other cases
            network_query = tuple(size // 2 for size in case.data.shape[1:])
            query_from = IMAGE_CENTRE
        image_query = case.voxels.to_image(network_query)
    tile, tile_input = tile_around(case.data, predictor.configuration_manager.patch_size, network_query,
                                   predictor.tile_step_size)
    record = record_tile(model, tile, tile_input)
    stages = summary(record, model.dca.features)
    # without foreground, the statistics are over every token
    tile_foreground = torch.from_numpy(cut_to_tile(foreground, tile)[None]) if has_foreground else None
    rows = attention_rows(record.stages, tile_foreground, record.grid)

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
        "label": str(label) if label else None,
        "model": {"folder": str(model.folder), "trainer": request.trainer, "plans": request.plans,
                  "configuration": request.configuration, "fold": model.fold, "checkpoint": model.checkpoint},
        "device": request.device,
        "query": {"from": query_from,
                  "image_voxel": list(image_query), "preprocessed_voxel": list(network_query),
                  "tile_voxel": list(tile.query), "token": list(record.query_token),
                  "token_index": record.query_index},
        "tile": {"slice": tile.slice_z, "start": list(tile.start), "size": list(tile.size)},
        "preprocessed_shape": list(case.data.shape[1:]),
        "token_grid": list(record.grid),
        "stages": stages,
        "statistics": summarize([rows]),
        "pictures": PICTURES,
    }
    (out / "attention.json").write_text(json.dumps(result, indent=2) + "\n")
    return _CaseResult(result, rows, has_foreground)


def _predict(model: Model, case: Case) -> np.ndarray:
    """The model's segmentation of the case in preprocessed voxels (Z, Y, X), as nnUNetv2_predict computes it
    (sliding window, Gaussian weighting, mirroring as the model was trained) before resampling it back."""
    predictor = model.predictor
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(case.data))
    segmentation = predictor.label_manager.convert_logits_to_segmentation(logits.float())
    return np.asarray(segmentation.cpu() if isinstance(segmentation, torch.Tensor) else segmentation)
