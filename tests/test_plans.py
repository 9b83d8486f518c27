"""The `dca` block and the plans-only route: a DCA configuration added to a plans file, trained by nnUNetTrainer."""

import json
import os

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_dca.config import DEFAULTS, parse_dca_block, resolved_dca_block, saved_dca_block
from nnunet_dca.network import DCAUNetFromPlans
from nnunet_dca.plans import DCA_NETWORK_CLASS_NAME, add_dca_configuration, find_plans_file
from nnunet_dca.trainers.nnUNetTrainerDCA import nnUNetTrainerDCA
from plans_examples import NUM_CLASSES, PATCH_SIZES, make_plans, single_thread  # noqa: F401 (autouse)


@pytest.fixture
def plans_file(tmp_path):
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(json.dumps(make_plans(), indent=4))
    return str(path)


def build(plans: dict, configuration: str, trainer=nnUNetTrainer, deep_supervision: bool = True):
    plans_manager = PlansManager(plans)
    return trainer.build_network_architecture(plans_manager, plans_manager.get_configuration(configuration),
                                              1, NUM_CLASSES, deep_supervision)


# the dca block

def test_an_absent_block_gives_the_papers_defaults_and_the_residual_merge():
    stages, kwargs = parse_dca_block(None)
    assert stages == 4
    assert kwargs == {key: value for key, value in DEFAULTS.items() if key != "stages"}
    assert kwargs["max_tokens"] == 1024 and kwargs["spatial_heads"] == 4 and kwargs["channel_heads"] == 1
    assert kwargs["merge"] == "residual"
    assert parse_dca_block({}) == (stages, kwargs)


def test_a_saved_block_without_the_merge_key_means_the_papers_merge():
    saved = {key: value for key, value in resolved_dca_block(None).items() if key != "merge"}
    assert saved_dca_block(saved) == {**resolved_dca_block(None), "merge": "paper"}
    assert saved_dca_block({**saved, "merge": "residual"})["merge"] == "residual"


def test_a_hand_written_block_without_the_merge_key_takes_the_defaults():
    assert saved_dca_block({"stages": 3}) == resolved_dca_block({"stages": 3})
    assert saved_dca_block(None)["merge"] == "residual"
    with pytest.raises(ValueError, match="must be a JSON object"):
        saved_dca_block(["stages", 3])


def test_a_block_overrides_defaults_and_json_lists_become_tuples():
    stages, kwargs = parse_dca_block({"stages": 3, "token_grid": [8, 6], "max_tokens": None,
                                      "spatial_heads": [2, 4, 4]})
    assert stages == 3
    assert kwargs["token_grid"] == (8, 6) and kwargs["spatial_heads"] == (2, 4, 4) and kwargs["max_tokens"] is None


def test_a_saved_block_without_the_later_keys_means_what_models_were_trained_with():
    # written before the score normalizations: every original key and merge, as nnunet-dca wrote it then
    written = {key: value for key, value in resolved_dca_block(None).items()
               if key not in ("channel_scores", "spatial_scores", "temperature")}
    saved = saved_dca_block(written)
    assert (saved["merge"], saved["channel_scores"], saved["spatial_scores"], saved["temperature"]) == (
        "residual", "paper", "paper", 1.0)
    # and before the merge key: the paper's merge
    del written["merge"]
    assert saved_dca_block(written)["merge"] == "paper"


def test_an_unknown_key_is_named_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"\['heads'\].*valid keys are \['stages', 'token_grid'"):
        parse_dca_block({"heads": 4})


@pytest.mark.parametrize("block, message", [
    ({"stages": 0}, "'stages' must be a positive integer"),
    ({"stages": True}, "'stages' must be a positive integer"),
    ({"n_blocks": 1.5}, "'n_blocks' must be a positive integer"),
    ({"max_tokens": "big"}, "'max_tokens' must be a positive integer or null"),
    ({"token_grid": [8, 0]}, "'token_grid' must be null"),
    ({"token_grid": []}, "'token_grid' must be null"),
    ({"channel_heads": "4"}, "'channel_heads' must be a positive integer or a list"),
    ({"spatial_heads": [4, -1]}, "'spatial_heads' must be a positive integer or a list"),
    ({"channel_attention": "yes"}, "'channel_attention' must be true or false"),
    ({"channel_attention": False, "spatial_attention": False}, "keep at least one on"),
    ({"merge": "sum"}, "'merge' must be one of \\['paper', 'residual'\\], got 'sum'"),
    ({"channel_scores": "softmax"},
     "'channel_scores' must be one of \\['paper', 'cosine', 'standardized', 'qk_norm'\\]"),
    ({"spatial_scores": "cosine"}, "'spatial_scores' must be one of \\['paper', 'qk_norm'\\], got 'cosine'"),
    ({"temperature": 0}, "'temperature' .* must be a positive number, got 0"),
    ({"temperature": True}, "'temperature' .* must be a positive number"),
    ([4], "must be a JSON object"),
])
def test_bad_values_say_what_to_change(block, message):
    with pytest.raises(ValueError, match=message):
        parse_dca_block(block)


# add_dca_configuration

def test_adds_a_configuration_that_inherits_and_names_the_dca_network(plans_file):
    name = add_dca_configuration(plans_file, "2d", dca={"n_blocks": 2})
    assert name == "2d_dca"
    plans = json.load(open(plans_file))
    added = plans["configurations"]["2d_dca"]
    source = make_plans()["configurations"]["2d"]["architecture"]
    assert added["inherits_from"] == "2d"
    assert added["architecture"] == {
        "network_class_name": "nnunet_dca.network.DCAUNetFromPlans",
        "arch_kwargs": {"base_network_class_name": source["network_class_name"], **source["arch_kwargs"],
                        "dca": {**DEFAULTS, "n_blocks": 2}},
        "_kw_requires_import": source["_kw_requires_import"],
    }
    resolved = PlansManager(plans).get_configuration("2d_dca")
    assert resolved.data_identifier == "nnUNetPlans_2d"  # the source's preprocessed data
    assert resolved.patch_size == PATCH_SIZES["2d"]


def test_other_configurations_and_keys_stay_as_they_were(plans_file):
    before = json.load(open(plans_file))
    add_dca_configuration(plans_file, "3d_fullres", name="3d_dca")
    after = json.load(open(plans_file))
    del after["configurations"]["3d_dca"]
    assert after == before
    assert list(after["configurations"]) == list(before["configurations"])


@pytest.mark.parametrize("source", ["2d", "3d_fullres", "2d_resenc"])
def test_the_stock_trainer_builds_dca_from_the_added_configuration(plans_file, source):
    name = add_dca_configuration(plans_file, source)
    plans = json.load(open(plans_file))
    network = build(plans, name)
    assert type(network) is DCAUNetFromPlans
    x = torch.rand(2, 1, *PATCH_SIZES[source])
    assert [o.shape for o in network(x)] == [o.shape for o in build(plans, source)(x)]
    assert isinstance(build(plans, name, deep_supervision=False)(x), torch.Tensor)  # what inference builds
    # a checkpoint moves between the plans route and the trainer route
    assert network.state_dict().keys() == build(plans, source, nnUNetTrainerDCA).state_dict().keys()


def test_a_source_that_inherits_gets_its_resolved_architecture(plans_file):
    plans = json.load(open(plans_file))
    plans["configurations"]["3d_fullres_bs4"] = {"inherits_from": "3d_fullres", "batch_size": 4}
    json.dump(plans, open(plans_file, "w"))
    add_dca_configuration(plans_file, "3d_fullres_bs4")
    resolved = PlansManager(json.load(open(plans_file))).get_configuration("3d_fullres_bs4_dca")
    assert resolved.batch_size == 4
    assert resolved.network_arch_init_kwargs["features_per_stage"] == [8, 16, 32, 64]


def test_the_dca_block_is_validated_before_the_file_is_touched(plans_file):
    before = open(plans_file).read()
    with pytest.raises(ValueError, match="unknown key"):
        add_dca_configuration(plans_file, dca={"token_gird": 8})
    assert open(plans_file).read() == before


@pytest.mark.parametrize("dca, message", [
    ({"spatial_heads": 3}, "spatial_heads=3 at stage 0 must divide"),
    ({"channel_heads": [1, 1, 1, 1, 1]}, "channel_heads must be a positive int or one per skip"),
])
def test_settings_this_network_cannot_take_are_refused_before_writing(plans_file, dca, message):
    before = open(plans_file).read()
    with pytest.raises(ValueError, match=message):
        add_dca_configuration(plans_file, dca=dca)
    assert open(plans_file).read() == before


def test_an_existing_configuration_is_replaced_only_when_asked(plans_file):
    add_dca_configuration(plans_file)
    before = open(plans_file).read()
    with pytest.raises(FileExistsError, match="--overwrite"):
        add_dca_configuration(plans_file, dca={"n_blocks": 2})
    with pytest.raises(FileExistsError, match="--overwrite"):
        add_dca_configuration(plans_file, name="3d_fullres")  # a stock one, too
    with pytest.raises(FileExistsError, match="'3d_fullres' was not made by nnunet-dca"):
        add_dca_configuration(plans_file, name="3d_fullres", overwrite=True)  # and never replaced
    assert open(plans_file).read() == before
    add_dca_configuration(plans_file, dca={"n_blocks": 2}, overwrite=True)
    configuration = json.load(open(plans_file))["configurations"]["2d_dca"]
    assert configuration["architecture"]["arch_kwargs"]["dca"]["n_blocks"] == 2


def test_a_dca_configuration_is_not_a_source(plans_file):
    add_dca_configuration(plans_file)
    with pytest.raises(ValueError, match="already uses DCA"):
        add_dca_configuration(plans_file, "2d_dca")
    with pytest.raises(ValueError, match="other than its source"):
        add_dca_configuration(plans_file, "2d", name="2d", overwrite=True)


def test_missing_file_and_unknown_source_are_clear(plans_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="nnUNetv2_plan_and_preprocess"):
        add_dca_configuration(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match=r"'3d_lowres' is not in .*available: \['2d', '3d_fullres', '2d_resenc'\]"):
        add_dca_configuration(plans_file, "3d_lowres")


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(plans_file, monkeypatch):
    os.chmod(plans_file, 0o644)
    before = open(plans_file).read()

    def dump_half_then_fail(obj, f, **kwargs):
        f.write('{"configurations": ')
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", dump_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        add_dca_configuration(plans_file)
    monkeypatch.undo()
    assert open(plans_file).read() == before
    assert os.listdir(os.path.dirname(plans_file)) == ["nnUNetPlans.json"]

    add_dca_configuration(plans_file)
    assert os.stat(plans_file).st_mode & 0o777 == 0o644  # the new file keeps the old one's permissions
    assert os.listdir(os.path.dirname(plans_file)) == ["nnUNetPlans.json"]


# find_plans_file

@pytest.fixture
def preprocessed(tmp_path, monkeypatch):
    for variable in ("nnUNet_raw", "nnUNet_results"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    dataset = tmp_path / "Dataset999_Tiny"
    dataset.mkdir()
    for name in ("nnUNetPlans.json", "nnUNetResEncUNetMPlans.json", "dataset.json", "dataset_fingerprint.json"):
        (dataset / name).write_text("{}")
    return dataset


@pytest.mark.parametrize("dataset", [999, "999", "Dataset999_Tiny"])
def test_finds_the_plans_file_by_id_or_name(preprocessed, dataset):
    assert find_plans_file(dataset) == str(preprocessed / "nnUNetPlans.json")
    assert find_plans_file(dataset, "nnUNetResEncUNetMPlans") == str(preprocessed / "nnUNetResEncUNetMPlans.json")


def test_a_missing_plans_identifier_lists_the_ones_there(preprocessed):
    with pytest.raises(FileNotFoundError, match=r"\['nnUNetPlans', 'nnUNetResEncUNetMPlans'\]"):
        find_plans_file(999, "nnUNetResEncUNetLPlans")


def test_find_plans_file_needs_nnunet_preprocessed(monkeypatch):
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    with pytest.raises(RuntimeError, match="nnUNet_preprocessed is not set"):
        find_plans_file(4)


def test_the_class_name_written_to_plans_imports():
    import pydoc
    assert pydoc.locate(DCA_NETWORK_CLASS_NAME) is DCAUNetFromPlans
