"""`nnunet-dca attention`: the query's tile, the recorded weights against the naive formulation, the pictures, the
numbers and one line for each bad input. The end-to-end tests use the demo's models (conftest.py)."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from matplotlib.image import imread
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from conftest import DCA_STEP_TRAINER, STOCK_STEP_TRAINER, Demo, run
from nnunet_dca.attention import AttentionError
from nnunet_dca.attention.case import VoxelMap, read_case
from nnunet_dca.attention.figures import attention_in_query_plane, picture_size, skip_change_in_query_slice
from nnunet_dca.attention.model import load_model
from nnunet_dca.attention.record import TileRecord, channel_matrix, record_tile
from nnunet_dca.attention.run import PICTURES
from nnunet_dca.attention.tile import Tile, centroid, check_query, label_values, tile_around
from nnunet_dca.cli import main
from nnunet_dca.dca import _pool_to_tokens, state_dict_from_reference
from nnunet_dca.demo import DEMO_TRAINER, TASK_ID
from nnunet_dca.naive import NaiveDCA
from nnunet_dca.recording import StageRecord

LABELS = {"background": 0, "lesion": 1, "core": 2, "cyst": 3}
HIPPOCAMPUS_PLANS = Path(__file__).resolve().parents[2] / "shared" / "plans" / "Dataset004_Hippocampus"


# the query and its tile

def test_labels_are_found_by_value_or_name_and_others_refused():
    assert label_values("2", LABELS) == (2,) and label_values("cyst", LABELS) == (3,)
    for background in ("0", "background"):
        with pytest.raises(AttentionError, match=f"label {background} is the background; give a foreground label: "
                                                 f"1 \\(lesion\\)"):
            label_values(background, LABELS)
    with pytest.raises(AttentionError, match="the dataset has no label '7'; its foreground labels are 1 \\(lesion\\), "
                                             "2 \\(core\\), 3 \\(cyst\\)"):
        label_values("7", LABELS)


def test_regions_are_their_values_and_the_ignore_label_is_refused():
    # nnU-Net's region-based labels (BraTS) and its ignore label
    labels = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3, "ignore": 4}
    assert label_values("whole tumor", labels) == (1, 2, 3) and label_values("1", labels) == (1,)
    for ignore in ("ignore", "4"):
        with pytest.raises(AttentionError, match=f"label {ignore} is nnU-Net's ignore label, which the model never "
                                                 f"predicts; give a foreground label: 1/2/3 \\(whole tumor\\), "
                                                 f"2/3 \\(tumor core\\), 3 \\(enhancing tumor\\)"):
            label_values(ignore, labels)


def test_the_centroid_is_the_nearest_voxel_to_the_mean_position_of_the_values():
    segmentation = np.zeros((3, 10, 10), dtype=np.int8)
    segmentation[1, 2:5, 6:9] = 2
    segmentation[2, 0, 0] = 1
    assert centroid(segmentation, (2,)) == (1, 3, 7)
    assert centroid(segmentation, None) == (1, 3, 6)  # 9 voxels of label 2 and one of label 1: (1.1, 2.7, 6.3)
    assert centroid(segmentation, (1, 2)) == centroid(segmentation, None)
    assert centroid(segmentation, (3,)) is None


@pytest.mark.parametrize("patch, shape, query", [
    ((40, 56), (1, 5, 30, 50), (2, 10, 20)),  # 2D, image smaller than the patch: padded
    ((40, 56), (2, 20, 100, 70), (3, 90, 5)),
    ((40, 56), (2, 20, 100, 70), (3, 50, 35)),
    ((8, 40, 56), (1, 20, 100, 70), (19, 50, 35)),
    ((8, 40, 56), (1, 6, 100, 70), (0, 0, 69)),
])
def test_the_tile_is_nnunets_sliding_window_nearest_the_query(patch, shape, query):
    data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    tile, tile_input = tile_around(data, patch, query, step=0.5)
    # nnU-Net's own windows over its padded image
    predictor = nnUNetPredictor(tile_step_size=0.5, device=torch.device("cpu"))
    predictor.configuration_manager = SimpleNamespace(patch_size=list(patch))
    padding = [max(0, p - s) for p, s in zip(patch, shape[-len(patch):])]
    padded = np.pad(data, [(0, 0)] * (4 - len(patch)) + [(d // 2, d - d // 2) for d in padding])
    windows = predictor._internal_get_sliding_window_slicers(padded.shape[1:])
    in_padded = [q + d // 2 for q, d in zip(query[-len(patch):], padding)]
    holding = [w for w in windows if all(s.start <= q < s.stop for s, q in zip(w[-len(patch):], in_padded))
               and (len(patch) == 3 or w[1] == query[0])]
    distance = [sum((s.start + p / 2 - q - 0.5) ** 2 for s, p, q in zip(w[-len(patch):], patch, in_padded))
                for w in holding]
    window = holding[int(np.argmin(distance))]
    assert tile.start == tuple(s.start - d // 2 for s, d in zip(window[-len(patch):], padding))
    assert tile.size == patch and tile.slice_z == (query[0] if len(patch) == 2 else None)
    assert tile.query == tuple(q - s.start for q, s in zip(in_padded, window[-len(patch):]))
    assert torch.equal(tile_input[0], torch.from_numpy(padded[window]))


def test_voxels_map_to_the_preprocessed_grid_and_back():
    # transposed (x, z, y), cropped by (1, 2, 3), every axis resampled
    voxels = VoxelMap(transpose=(2, 0, 1), crop_start=(1, 2, 3), cropped_shape=(10, 20, 30),
                      network_shape=(20, 10, 30))
    image_voxel = (5, 9, 7)  # transposed (7, 5, 9), cropped (6, 3, 6)
    assert voxels.to_network(image_voxel) == (12, 1, 6)  # (6.5 * 2 - 0.5, 3.5 / 2 - 0.5, 6)
    # back: the voxel centres of the preprocessed voxels, (2.5 + 2, 6 + 3, 5.75 + 1): the axis kept at its
    # resolution returns exactly
    assert voxels.to_image((12, 1, 6)) == (4.5, 9.0, 6.75)
    with pytest.raises(AttentionError, match="where every channel of the image is zero"):
        voxels.to_network((1, 9, 7))


@pytest.mark.parametrize("size, grid", [((40, 56), (14, 10)), ((56, 40), (14, 10)), ((37, 29), (6, 5)),
                                        ((10, 56, 48), (5, 14, 12)), ((12, 15, 19), (3, 4, 5))])
def test_the_querys_token_is_the_one_whose_pooling_window_holds_it(size, grid):
    rng = np.random.default_rng(1)
    for _ in range(20):
        query = tuple(int(rng.integers(0, s)) for s in size)
        tile = Tile(slice_z=None, start=(0,) * len(size), size=size, query=query)
        marker = torch.zeros(1, 1, *size)
        marker[(0, 0, *query)] = 1
        pooled = _pool_to_tokens(marker, grid)[0, :, 0]  # DCA's own pooling, tokens in DCA's order
        assert pooled[int(np.ravel_multi_index(tile.token(grid), grid))] > 0, query


@pytest.mark.skipif(not HIPPOCAMPUS_PLANS.is_dir(), reason=f"needs nnU-Net's real plans at {HIPPOCAMPUS_PLANS}")
def test_a_query_lands_where_nnunets_preprocessing_puts_its_voxel(tmp_path):
    # nnU-Net's Hippocampus plans, with a transpose; the image anisotropic, with a zero border nnU-Net crops
    plans = json.loads((HIPPOCAMPUS_PLANS / "nnUNetPlans.json").read_text())
    plans.update(transpose_forward=[2, 0, 1], transpose_backward=[1, 2, 0])
    plans_manager = PlansManager(plans)
    dataset_json = json.loads((HIPPOCAMPUS_PLANS / "dataset.json").read_text())
    image = np.zeros((14, 22, 18), dtype=np.float32)  # z, y, x
    image[2:-3, 1:-2, 3:-1] = 1
    for query in [(5, 9, 7), (2, 1, 3), (10, 19, 16), (7, 12, 10)]:
        marked = image.copy()
        marked[query] = 40
        itk = sitk.GetImageFromArray(marked)
        itk.SetSpacing((0.7, 1.3, 1.7))  # x, y, z: no voxel centre lands halfway between two after resampling
        path = tmp_path / "case_0000.nii.gz"
        sitk.WriteImage(itk, str(path))
        case = read_case([path], None, plans_manager, plans_manager.get_configuration("3d_fullres"), dataset_json)
        assert case.data.shape[1:] != image.shape  # transposed and resampled
        marker = np.unravel_index(int(np.argmax(case.data[0])), case.data.shape[1:])
        assert case.voxels.to_network(query) == marker
        assert np.allclose(case.voxels.to_image(marker), query, atol=0.5)


def test_queries_outside_the_image_are_refused_and_2d_images_take_y_x():
    assert check_query([0, 4, 5], (1, 8, 8)) == (0, 4, 5) and check_query([4, 5], (1, 8, 8)) == (0, 4, 5)
    with pytest.raises(AttentionError, match="--query 3 8 1 is outside the image, whose voxels run from 0 0 0 to "
                                             "9 7 7"):
        check_query([3, 8, 1], (10, 8, 8))
    with pytest.raises(AttentionError, match="three voxel indices Z Y X"):
        check_query([4, 5], (10, 8, 8))


def test_3d_pictures_show_the_plane_and_slice_through_the_query():
    grid, size, query = (4, 3, 5), (8, 6, 10), (5, 2, 7)  # the query's token: (2, 1, 3)
    tile = Tile(slice_z=None, start=(0, 0, 0), size=size, query=query)
    token = tile.token(grid)
    weights = torch.zeros(1, 2, 60, 60)
    row = int(np.ravel_multi_index(token, grid))
    weights[0, 0, row, row] = 1  # head 0 attends to the query's own token
    weights[0, 1, row, int(np.ravel_multi_index((0, 1, 3), grid))] = 1  # head 1 to a token in another plane
    skip = torch.zeros(1, 2, 4, 3, 5)  # the skip at half the tile's size: the query's slice is 5 // 2 = 2
    refined = skip.clone()
    refined[0, :, 2, 1, 4] = 3
    refined[0, :, 3, 0, 0] = 5  # another slice
    record = TileRecord([StageRecord(skip=skip, refined=refined)], grid, token, torch.zeros(1))
    maps = attention_in_query_plane(record, weights)
    assert maps.shape == (2, 3, 5) and maps[0, 1, 3] == 1 and maps[0].sum() == 1 and not maps[1].any()
    change = skip_change_in_query_slice(record.stages[0], tile)
    assert change.shape == (3, 5) and change[1, 4] == 3 and change.sum() == 3


# the demo's models

def demo_case(demo: Demo) -> tuple[list[Path], Path]:
    """The demo's first test case: its two image files and its reference."""
    images = sorted((demo.layout.raw / demo.layout.dataset_name / "imagesTs").glob("*_0000.nii.gz"))[0]
    case = images.name.removesuffix("_0000.nii.gz")
    return [images, images.with_name(f"{case}_0001.nii.gz")], demo.layout.task.test_labels / f"{case}.nii.gz"


def use_demo_folders(demo: Demo, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in demo.env().items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)


# configuration: (trainer, the fixture that trains it); the demo's 2d model comes with the demo
MODELS = {"2d": (DEMO_TRAINER, None), "3d_fullres": (DCA_STEP_TRAINER, "dca_3d_fullres_model"),
          "2d_dca": (STOCK_STEP_TRAINER, "plans_only_2d_model")}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))]


@pytest.fixture(params=list(MODELS))
def trained(request, demo):
    """(configuration, trainer) of a trained DCA model of the demo's task: the demo's 2d, 3d_fullres, and 2d_dca of
    the plans-only route (the stock trainer)."""
    trainer, fixture = MODELS[request.param]
    if fixture:
        request.getfixturevalue(fixture)
    return request.param, trainer


@pytest.mark.e2e
@pytest.mark.parametrize("device", DEVICES)
def test_recorded_weights_equal_the_naive_formulation_and_leave_the_output_unchanged(demo, trained, device,
                                                                                      monkeypatch):
    configuration, trainer = trained
    use_demo_folders(demo, monkeypatch)
    model = load_model(str(TASK_ID), configuration, trainer, "nnUNetPlans", "0", "checkpoint_final.pth", device)
    images, label = demo_case(demo)
    predictor = model.predictor
    case = read_case(images, label, predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json)
    middle = tuple(size // 2 for size in case.data.shape[1:])
    tile, tile_input = tile_around(case.data, predictor.configuration_manager.patch_size, middle, 0.5)
    record = record_tile(model, tile, tile_input)

    with torch.no_grad(), torch.autocast("cuda", enabled=device == "cuda"):
        unrecorded = model.network(tile_input.to(device)).float().cpu()
    assert torch.equal(record.logits, unrecorded)

    dca = model.dca
    naive = NaiveDCA(dca.features, token_grid=record.grid, n_blocks=len(dca.blocks),
                     channel_heads=dca.blocks[0].channel_attentions[0].heads,
                     spatial_heads=dca.blocks[0].spatial_attentions[0].heads, spatial_dims=model.spatial_dims,
                     merge=dca.merge).eval()
    ours = dca.state_dict()
    naive.load_state_dict({key: ours[renamed].cpu() for key, renamed
                           in zip(naive.state_dict(), state_dict_from_reference(naive.state_dict()))})
    with torch.no_grad():
        refined = naive([stage.skip for stage in record.stages])
    tolerance = {"atol": 2e-3, "rtol": 2e-3} if device == "cuda" else {"atol": 1e-5, "rtol": 1e-4}
    for stage, (recorded, expected) in enumerate(zip(record.stages, refined)):
        torch.testing.assert_close(recorded.refined, expected, **tolerance)
        for kind in ("channel", "spatial"):
            weights = getattr(recorded, f"{kind}_attention")[0]
            torch.testing.assert_close(weights, naive.attention_weights[kind][0][stage], **tolerance)
            torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


@pytest.mark.e2e
def test_the_command_writes_the_pictures_and_numbers_of_one_case(demo, trained, tmp_path):
    configuration, trainer = trained
    images, label = demo_case(demo)
    query = [int(size) // 2 for size in reversed(sitk.ReadImage(str(images[0])).GetSize())]
    out = tmp_path / "attention"
    printed = run(["nnunet-dca", "attention", "-d", TASK_ID, "-c", configuration, "-tr", trainer, "-i", *images,
                   "--label", label, "--query", *query, "-o", out, "-device", "cpu"], demo.env())
    assert f"Wrote overview.png, spatial_attention.png, channel_attention.png, skip_change.png, attention.json and " \
           f"attention.npz to {out}" in printed

    result = json.loads((out / "attention.json").read_text())
    assert set(result) == {"case", "images", "label", "model", "device", "query", "tile", "preprocessed_shape",
                           "token_grid", "stages", "pictures"}
    assert result["model"]["configuration"] == configuration and result["model"]["trainer"] == trainer
    assert result["query"]["image_voxel"] == query and result["query"]["from"] == "--query"
    tile = result["tile"]
    spatial_axes = slice(1, None) if configuration == "2d" else slice(None)
    assert all(start <= q < start + size for start, size, q
               in zip(tile["start"], tile["size"], result["query"]["preprocessed_voxel"][spatial_axes]))
    assert result["query"]["token_index"] == np.ravel_multi_index(result["query"]["token"], result["token_grid"])
    stages = result["stages"]
    features = [stage["channels"] for stage in stages]
    for stage in stages:
        assert stage["skip_change_rms"] > 0  # the demo's DCA has trained: its branch is no longer zero
        (block,) = stage["blocks"]
        assert set(block) == {"block", "spatial_attention", "spatial_uniform_entropy",
                              "channel_attention_per_stage_block", "channel_uniform_per_stage_block"}
        for head in block["spatial_attention"]:
            assert set(head) == {"head", "entropy", "max_probability", "max_token"}
            assert 0 < head["entropy"] <= block["spatial_uniform_entropy"] + 1e-6
            assert 1 / np.prod(result["token_grid"]) <= head["max_probability"] <= 1
        assert sum(block["channel_attention_per_stage_block"]) == pytest.approx(1)
        assert block["channel_uniform_per_stage_block"] == pytest.approx([c / sum(features) for c in features])

    saved = np.load(out / "attention.npz")
    heads = len(stages[0]["blocks"][0]["spatial_attention"])
    for index, stage in enumerate(stages):
        spatial = saved[f"stage{index}_block0_spatial"]
        assert spatial.shape == (heads, *result["token_grid"])
        np.testing.assert_allclose(spatial.sum(axis=tuple(range(1, spatial.ndim))), 1, rtol=1e-5)
        np.testing.assert_allclose(spatial.reshape(heads, -1).max(-1),
                                   [head["max_probability"] for head in stage["blocks"][0]["spatial_attention"]])
        assert saved[f"stage{index}_block0_channel"].shape == (stage["channels"], sum(features))
        assert saved[f"stage{index}_skip_change"].shape == tuple(stage["skip_shape"])

    channels = 2  # the demo's T1w and T2w
    panels = {"overview": (1, channels + 2), "spatial_attention": (len(stages), heads),
              "channel_attention": (len(stages), 2), "skip_change": (1, len(stages))}
    for name, (rows, columns) in panels.items():
        picture = imread(out / PICTURES[name])
        assert picture.shape[1::-1] == picture_size(rows, columns), name  # (width, height)
        assert picture[..., :3].std() > 0.05, name  # drawn on, not blank


def test_the_channel_matrix_puts_each_heads_weights_on_the_diagonal():
    weights = torch.arange(2 * 2 * 3, dtype=torch.float32).view(2, 2, 3)
    matrix = channel_matrix(weights)
    assert matrix.shape == (4, 6)
    assert torch.equal(matrix[:2, :3], weights[0]) and torch.equal(matrix[2:, 3:], weights[1])
    assert not matrix[:2, 3:].any() and not matrix[2:, :3].any()


def bad_inputs(demo: Demo, stock_2d_model: Path, tmp_path: Path) -> dict[str, tuple[list, str]]:
    images, label = demo_case(demo)
    slice_2d = tmp_path / "slice_0000.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(images[0]))[:, :, 0], str(slice_2d))
    second_slice = tmp_path / "slice_0001.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(images[1]))[:, :, 0], str(second_slice))
    odd_label = tmp_path / "odd.nii.gz"
    reference = sitk.ReadImage(str(label))
    odd = sitk.GetImageFromArray((sitk.GetArrayFromImage(reference) > 0).astype(np.uint8) * 127)
    odd.CopyInformation(reference)
    sitk.WriteImage(odd, str(odd_label))
    (demo.layout.model / "fold_0" / "checkpoint_garbled.pth").write_bytes(b"not a checkpoint")
    png = tmp_path / "case_0000.png"
    png.write_bytes(b"")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "overview.png").write_bytes(b"the user's")
    model = ["-d", str(TASK_ID), "-c", "2d", "-tr", DEMO_TRAINER]
    case = ["-i", *map(str, images), "-o", str(tmp_path / "out")]
    return {
        "no model folder": (["-d", str(TASK_ID), "-c", "2d", "-tr", "nnUNetTrainerDCA_untrained", *case],
                            "no model folder "),
        "no fold": ([*model, "-f", "3", *case], "fold 3 of nnUNetTrainerDCA_demo__nnUNetPlans__2d is not trained"),
        "no checkpoint": ([*model, "-chk", "checkpoint_7.pth", *case], "no checkpoint checkpoint_7.pth in "),
        "no DCA": (["-d", str(TASK_ID), "-c", "2d", "-tr", stock_2d_model.name.split("__")[0], *case],
                   "(PlainConvUNet) has no DCA"),
        "channels": ([*model, "-i", str(images[0]), "-o", str(tmp_path / "out")],
                     "the model takes 2 channel(s), _0000 (T1w), _0001 (T2w), as in imagesTs; got 1 file(s) holding 1"),
        "channel order": ([*model, "-i", str(images[1]), str(images[0]), "-o", str(tmp_path / "out")],
                          "the files are channels _0001, _0000; give the case's files in channel order: _0000 (T1w), "
                          "_0001 (T2w)"),
        "reference values": ([*model, *case, "--label", str(odd_label)],
                             "holds values [127] that are no label of the dataset (its labels: [0, 1, 2, 3])"),
        "not a checkpoint": ([*model, "-chk", "checkpoint_garbled.pth", *case],
                             "is it a checkpoint nnUNetv2_train wrote?"),
        "dimensionality": ([*model, "-i", str(slice_2d), str(second_slice), "-o", str(tmp_path / "out")],
                           "is a 2D image"),
        "query outside": ([*model, *case, "--query", "0", "0", "999"], "is outside the image"),
        "unknown label": ([*model, *case, "--query-label", "7"], "the dataset has no label '7'"),
        "background label": ([*model, *case, "--query-label", "background"], "label background is the background"),
        "missing label file": ([*model, *case, "--label", str(tmp_path / "none.nii.gz")], "no such file"),
        "another file type": ([*model, "-i", str(png), "-o", str(tmp_path / "out")],
                              f"{png} is not a .nii.gz file, as the dataset's images are"),
        "output taken": ([*model, "-i", *map(str, images), "-o", str(occupied)],
                         "already holds overview.png; give another -o, or --overwrite"),
    }


BAD_INPUTS = ["no model folder", "no fold", "no checkpoint", "not a checkpoint", "no DCA", "channels", "channel order",
              "dimensionality", "query outside", "unknown label", "background label", "missing label file",
              "reference values", "another file type", "output taken"]


@pytest.mark.e2e
@pytest.mark.parametrize("bad", BAD_INPUTS)
def test_each_bad_input_gives_one_line(demo, stock_2d_model, tmp_path, monkeypatch, capsys, bad):
    use_demo_folders(demo, monkeypatch)
    arguments, message = bad_inputs(demo, stock_2d_model, tmp_path)[bad]
    assert main(["attention", *arguments, "-device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnunet-dca attention: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert (tmp_path / "occupied" / "overview.png").read_bytes() == b"the user's"
