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
from nnunet_dca.attention import run as attention_run
from nnunet_dca.attention.case import VoxelMap, find_cases, find_references, read_case
from nnunet_dca.attention.figures import attention_in_query_plane, picture_size, skip_change_in_query_slice
from nnunet_dca.attention.model import load_model
from nnunet_dca.attention.record import TileRecord, channel_matrix, record_tile
from nnunet_dca.attention.run import IMAGE_CENTRE, PICTURES, WRITTEN
from nnunet_dca.attention.tile import Tile, centroid, check_query, cut_to_tile, label_values, tile_around
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


def test_a_volume_is_cut_to_the_tile_with_zeros_where_nnunet_pads():
    volume = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    # 3D, the tile reaching past the volume's start (padding) and end
    cut = cut_to_tile(volume, Tile(slice_z=None, start=(-1, 2, 0), size=(4, 3, 5), query=(1, 0, 0)))
    assert cut.shape == (4, 3, 5)
    assert not cut[0].any() and not cut[:, 2].any()  # padded before z = 0 and past y = 3
    assert np.array_equal(cut[1:, :2], volume[:, 2:4])
    # 2D: the tile's slice
    cut = cut_to_tile(volume, Tile(slice_z=2, start=(1, 1), size=(2, 3), query=(0, 0)))
    assert np.array_equal(cut, volume[2, 1:3, 1:4])


DATASET_JSON = {"file_ending": ".nii.gz", "channel_names": {"0": "T1w", "1": "T2w"}}


def touch(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return [folder / name for name in names]


def test_cases_are_grouped_by_name_from_a_folder_or_a_list_of_files(tmp_path):
    touch(tmp_path / "in", "b_0001.nii.gz", "a_0000.nii.gz", "b_0000.nii.gz", "a_0001.nii.gz", "notes.txt")
    folder = tmp_path / "in"
    assert find_cases([folder], DATASET_JSON) == {"a": [folder / "a_0000.nii.gz", folder / "a_0001.nii.gz"],
                                                  "b": [folder / "b_0000.nii.gz", folder / "b_0001.nii.gz"]}
    # given files keep their order, case by case as they first appear; read_case refuses channels out of order
    files = [folder / "b_0001.nii.gz", folder / "a_0000.nii.gz", folder / "b_0000.nii.gz", folder / "a_0001.nii.gz"]
    assert find_cases(files, DATASET_JSON) == {"b": [files[0], files[2]], "a": [files[1], files[3]]}
    assert list(find_cases(files[1::2], DATASET_JSON)) == ["a"]


@pytest.mark.parametrize("files, message", [
    ([], "{folder} holds no .nii.gz files; give a folder of images named as in imagesTs (CASE_0000.nii.gz ...), as "
         "nnUNetv2_predict -i takes"),
    (["a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz"],
     "case b has no b_0001.nii.gz: the model takes 2 channel(s), _0000 (T1w), _0001 (T2w), as in imagesTs"),
    (["a_0000.nii.gz", "a_0001.nii.gz", "a_0002.nii.gz"],
     "case a has a_0002.nii.gz: the model takes 2 channel(s), _0000 (T1w), _0001 (T2w), as in imagesTs"),
])
def test_a_folder_without_images_or_a_case_missing_a_channel_is_refused(tmp_path, files, message):
    folder = tmp_path / "in"
    touch(folder, "readme.txt", *files)
    with pytest.raises(AttentionError) as refused:
        find_cases([folder], DATASET_JSON)
    assert str(refused.value) == message.format(folder=folder)


def test_inputs_that_do_not_exist_or_mix_a_folder_with_files_are_refused(tmp_path):
    (image,) = touch(tmp_path, "a_0000.nii.gz")
    with pytest.raises(AttentionError, match=f"no such file or folder: {tmp_path / 'nothing'}"):
        find_cases([image, tmp_path / "nothing"], DATASET_JSON)
    with pytest.raises(AttentionError, match="got 2 paths with a folder among them; give the folder alone"):
        find_cases([tmp_path, image], DATASET_JSON)


def test_references_are_a_file_for_one_case_or_a_folder_for_several(tmp_path):
    (reference,) = touch(tmp_path / "labels", "a.nii.gz")
    assert find_references(tmp_path / "labels", ["a", "b"], ".nii.gz") == {"a": reference, "b": None}
    assert find_references(reference, ["a"], ".nii.gz") == {"a": reference}
    assert find_references(None, ["a", "b"], ".nii.gz") == {"a": None, "b": None}
    with pytest.raises(AttentionError, match="is one case's reference, and -i holds 2 cases; give a folder of "
                                             "references named CASE.nii.gz"):
        find_references(reference, ["a", "b"], ".nii.gz")


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

    assert f"Wrote attention_summary.json and attention_summary.png to {out}" in printed

    result = json.loads((out / "attention.json").read_text())
    assert set(result) == {"case", "images", "label", "model", "device", "query", "tile", "preprocessed_shape",
                           "token_grid", "stages", "statistics", "pictures"}
    summary = json.loads((out / "attention_summary.json").read_text())
    assert summary["statistics"] == result["statistics"]  # one case: the same rows
    (case,) = summary["cases"]
    assert (case["name"], case["folder"], case["query_from"]) == (result["case"], None, "--query")
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
    check_summary_picture(out, len(stages))


def check_summary_picture(out: Path, stages: int) -> None:
    picture = imread(out / "attention_summary.png")
    assert picture.shape[1::-1] == picture_size(stages, 2)  # per stage a histogram of each attention
    assert picture[..., :3].std() > 0.05


def two_demo_cases(demo: Demo, tmp_path: Path) -> tuple[list[Path], Path]:
    """The files of the demo's first two test cases, copied into a folder of their own, and that folder."""
    folder = tmp_path / "images"
    folder.mkdir()
    test_images = sorted((demo.layout.raw / demo.layout.dataset_name / "imagesTs").glob("*.nii.gz"))[:4]
    for image in test_images:
        (folder / image.name).write_bytes(image.read_bytes())
    return [folder / image.name for image in test_images], folder


@pytest.mark.e2e
@pytest.mark.parametrize("given", ["folder", "files"])
def test_several_cases_get_a_folder_each_and_statistics_over_all_of_them(demo, tmp_path, given):
    files, folder = two_demo_cases(demo, tmp_path)
    out = tmp_path / "attention"
    printed = run(["nnunet-dca", "attention", "-d", TASK_ID, "-c", "2d", "-tr", DEMO_TRAINER, "-device", "cpu",
                   "-i", *([folder] if given == "folder" else files), "--label", demo.layout.task.test_labels,
                   "-o", out], demo.env())
    names = sorted({path.name.removesuffix("_0000.nii.gz").removesuffix("_0001.nii.gz") for path in files})
    summary = json.loads((out / "attention_summary.json").read_text())
    assert set(summary) == {"model", "device", "cases", "statistics", "targets", "cases_without_foreground"}
    assert [case["name"] for case in summary["cases"]] == names
    assert [case["folder"] for case in summary["cases"]] == names
    assert summary["cases_without_foreground"] == [case["name"] for case in summary["cases"] if not case["foreground"]]
    assert set(summary["targets"]) == {"channel_not_collapsed", "channel_not_uniform", "spatial_not_uniform",
                                       "spatial_not_one_hot"}
    per_case = [json.loads((out / name / "attention.json").read_text()) for name in names]
    for name, result in zip(names, per_case):
        assert sorted(path.name for path in (out / name).iterdir()) == sorted(WRITTEN)
        assert result["label"] == str(demo.layout.task.test_labels / f"{name}.nii.gz")
        assert name in printed
    # every row of every case counts once: counts add up, means and shares are the row-weighted ones of the cases
    for stage, statistics in enumerate(summary["statistics"]):
        (block,) = statistics["blocks"]
        cases = [result["statistics"][stage]["blocks"][0] for result in per_case]
        for kind, mean in (("channel", "effective"), ("spatial", "entropy_ratio")):
            rows = [case[kind]["rows"] for case in cases]
            assert block[kind]["rows"] == sum(rows)
            assert block[kind][mean]["mean"] == pytest.approx(
                sum(n * case[kind][mean]["mean"] for n, case in zip(rows, cases)) / sum(rows))
        assert block["channel"]["collapsed_share"] == pytest.approx(
            sum(case["channel"]["rows"] * case["channel"]["collapsed_share"] for case in cases)
            / block["channel"]["rows"])
        assert block["spatial"]["rows"] == 2 * len(per_case[0]["stages"][stage]["blocks"][0]["spatial_attention"]) * \
            np.prod(per_case[0]["token_grid"])  # every token's row of every head, in two cases
        assert f"  stage {stage}: channel attention " in printed
    check_summary_picture(out, len(summary["statistics"]))
    assert f"Wrote attention_summary.json and attention_summary.png to {out}" in printed
    assert f"attention.npz of each case to {out / 'CASE'} ({', '.join(names)})" in printed


@pytest.mark.e2e
@pytest.mark.parametrize("query_label", [None, "cyst"])
def test_a_case_without_the_predicted_foreground_is_summarized_over_every_token(demo, tmp_path, monkeypatch, capsys,
                                                                                 query_label):
    use_demo_folders(demo, monkeypatch)
    files, folder = two_demo_cases(demo, tmp_path)
    empty = files[0].name.removesuffix("_0000.nii.gz")
    predict = attention_run._predict

    def predicts_nothing_in_the_first_case(model, case):  # as a model that finds nothing there would
        prediction = predict(model, case)
        return np.zeros_like(prediction) if case.name == empty else prediction

    monkeypatch.setattr(attention_run, "_predict", predicts_nothing_in_the_first_case)
    out = tmp_path / "attention"
    assert main(["attention", "-d", str(TASK_ID), "-c", "2d", "-tr", DEMO_TRAINER, "-device", "cpu", "-i", str(folder),
                 "-o", str(out), *(["--query-label", query_label] if query_label else [])]) == 0
    printed = capsys.readouterr().out
    what = f"label {query_label}" if query_label else "foreground"
    assert f"the model predicts no {what} in {empty}; query at image voxel " in printed
    assert f"(Z Y X; from {IMAGE_CENTRE}), token " in printed and "statistics over every token" in printed
    assert "predicts no any" not in printed
    summary = json.loads((out / "attention_summary.json").read_text())
    assert summary["cases_without_foreground"][0] == empty
    assert summary["cases"][0] == {"name": empty, "folder": empty, "foreground": False, "query_from": IMAGE_CENTRE}
    result = json.loads((out / empty / "attention.json").read_text())
    assert result["query"]["preprocessed_voxel"] == [size // 2 for size in result["preprocessed_shape"]]
    for stage, entry in zip(result["stages"], result["statistics"]):
        (block,) = entry["blocks"]
        assert block["spatial_foreground"] is None  # no mask: over every token
        assert block["spatial"]["rows"] == len(stage["blocks"][0]["spatial_attention"]) * np.prod(result["token_grid"])
    assert sorted(path.name for path in (out / empty).iterdir()) == sorted(WRITTEN)


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
    empty = tmp_path / "empty"
    touch(empty, "readme.txt")
    two_cases, _ = two_demo_cases(demo, tmp_path)
    missing = tmp_path / "missing"
    missing.mkdir()
    for image in two_cases[:3]:  # the second case without its _0001
        (missing / image.name).write_bytes(image.read_bytes())
    second = two_cases[2].name.removesuffix("_0000.nii.gz")
    occupied_case = tmp_path / "occupied_cases" / second
    occupied_case.mkdir(parents=True)
    (occupied_case / "attention.json").write_text("the user's")
    return {
        "no model folder": (["-d", str(TASK_ID), "-c", "2d", "-tr", "nnUNetTrainerDCA_untrained", *case],
                            "no model folder "),
        "no fold": ([*model, "-f", "3", *case], "fold 3 of nnUNetTrainerDCA_demo__nnUNetPlans__2d is not trained"),
        "no checkpoint": ([*model, "-chk", "checkpoint_7.pth", *case], "no checkpoint checkpoint_7.pth in "),
        "no DCA": (["-d", str(TASK_ID), "-c", "2d", "-tr", stock_2d_model.name.split("__")[0], *case],
                   "(PlainConvUNet) has no DCA"),
        "channels": ([*model, "-i", str(images[0]), "-o", str(tmp_path / "out")],
                     f"case {images[0].name.removesuffix('_0000.nii.gz')} has no {images[1].name}: the model takes 2 "
                     f"channel(s), _0000 (T1w), _0001 (T2w), as in imagesTs"),
        "missing channel": ([*model, "-i", str(missing), "-o", str(tmp_path / "out")],
                            f"case {second} has no {second}_0001.nii.gz: the model takes 2 channel(s), _0000 (T1w), "
                            f"_0001 (T2w), as in imagesTs"),
        "empty folder": ([*model, "-i", str(empty), "-o", str(tmp_path / "out")],
                         f"{empty} holds no .nii.gz files; give a folder of images named as in imagesTs"),
        "no such input": ([*model, "-i", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out")],
                          f"no such file or folder: {tmp_path / 'nowhere'}"),
        "query with several cases": ([*model, "-i", *map(str, two_cases), "-o", str(tmp_path / "out"), "--query", "0",
                                      "5", "5"], "--query Z Y X names a voxel of one case, and -i holds 2 cases"),
        "case output taken": ([*model, "-i", *map(str, two_cases), "-o", str(occupied_case.parent)],
                              f"{occupied_case.parent} already holds {second}/attention.json; give another -o, or "
                              f"--overwrite"),
        "one reference for several cases": ([*model, "-i", *map(str, two_cases), "-o", str(tmp_path / "out"),
                                             "--label", str(label)], "is one case's reference, and -i holds 2 cases"),
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
              "reference values", "another file type", "output taken", "missing channel", "empty folder",
              "no such input", "query with several cases", "one reference for several cases", "case output taken"]


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
