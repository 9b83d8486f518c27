"""nnUNetTrainerDCA and its variants, as nnU-Net builds, finds and instantiates them."""

import copy
import json
import os
import re
import textwrap

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.training_length import nnUNetTrainer_Xepochs
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_dca.config import DEFAULTS
from nnunet_dca.network import DCAUNet
from nnunet_dca.plans import add_dca_configuration
from nnunet_dca.trainers import nnUNetTrainerDCA as trainers_module
from nnunet_dca.trainers import trainer_dir
from nnunet_dca.trainers.nnUNetTrainerDCA import (
    RESOLVED_KEY,
    nnUNetTrainerDCA,
    nnUNetTrainerDCA_5epochs,
    nnUNetTrainerDCA_CCAOnly,
    nnUNetTrainerDCA_ChannelCosine,
    nnUNetTrainerDCA_ChannelQKNorm,
    nnUNetTrainerDCA_ChannelStandardized,
    nnUNetTrainerDCA_CosineQKNorm,
    nnUNetTrainerDCA_FullGrid,
    nnUNetTrainerDCA_Paper,
    nnUNetTrainerDCA_QKNorm,
    nnUNetTrainerDCA_SCAOnly,
    nnUNetTrainerDCA_SpatialQKNorm,
    nnUNetTrainerDCA_StandardizedQKNorm,
)
from plans_examples import DATASET_JSON, NUM_CLASSES, PATCH_SIZES, NotAUNet, make_plans, single_thread  # noqa: F401 (autouse)


def build(trainer, configuration: str = "2d", plans: dict | None = None, deep_supervision: bool = True):
    plans_manager = PlansManager(plans or make_plans())
    return trainer.build_network_architecture(plans_manager, plans_manager.get_configuration(configuration),
                                              1, NUM_CLASSES, deep_supervision)


def shapes(output) -> list:
    return [o.shape for o in output] if isinstance(output, list) else [output.shape]


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres", "2d_resenc"])
@pytest.mark.parametrize("deep_supervision", [True, False])  # False: what nnUNetv2_predict builds
def test_builds_a_dca_unet_with_the_stock_trainers_outputs(configuration, deep_supervision):
    network = build(nnUNetTrainerDCA, configuration, deep_supervision=deep_supervision)
    assert isinstance(network, DCAUNet)
    x = torch.rand(2, 1, *PATCH_SIZES[configuration])
    assert shapes(network(x)) == shapes(build(nnUNetTrainer, configuration, deep_supervision=deep_supervision)(x))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("configuration", ["2d", "3d_fullres", "2d_resenc"])
def test_the_dca_network_starts_as_the_stock_trainers_from_the_same_seed(configuration, train):
    # the stock U-Net is built and initialized first, DCA after it: one seed gives both the same U-Net weights
    torch.manual_seed(0)
    stock = build(nnUNetTrainer, configuration).train(train)
    torch.manual_seed(0)
    network = build(nnUNetTrainerDCA, configuration).train(train)
    x = torch.randn(2, 1, *PATCH_SIZES[configuration])
    with torch.no_grad():
        assert all(torch.equal(o, e) for o, e in zip(network(x), stock(x)))


SCORE_VARIANTS = {
    nnUNetTrainerDCA_ChannelCosine: ("cosine", "paper"),
    nnUNetTrainerDCA_ChannelStandardized: ("standardized", "paper"),
    nnUNetTrainerDCA_ChannelQKNorm: ("qk_norm", "paper"),
    nnUNetTrainerDCA_SpatialQKNorm: ("paper", "qk_norm"),
    nnUNetTrainerDCA_QKNorm: ("qk_norm", "qk_norm"),
    nnUNetTrainerDCA_CosineQKNorm: ("cosine", "qk_norm"),
    nnUNetTrainerDCA_StandardizedQKNorm: ("standardized", "qk_norm"),
}


@pytest.mark.parametrize("trainer", list(SCORE_VARIANTS), ids=lambda t: t.__name__)
@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_each_score_variant_builds_its_scores_and_starts_as_the_stock_trainers(trainer, configuration):
    torch.manual_seed(0)
    stock = build(nnUNetTrainer, configuration)
    torch.manual_seed(0)
    network = build(trainer, configuration)
    block = network.dca.blocks[0]
    assert ({a.scores for a in block.channel_attentions}, {a.scores for a in block.spatial_attentions}) == \
        tuple({scores} for scores in SCORE_VARIANTS[trainer])
    x = torch.randn(2, 1, *PATCH_SIZES[configuration])
    with torch.no_grad():
        for train in (True, False):
            network.train(train), stock.train(train)
            assert all(torch.equal(o, e) for o, e in zip(network(x), stock(x)))


def test_the_paper_variant_builds_the_papers_block():
    network = build(nnUNetTrainerDCA_Paper)
    assert network.dca.merge == "paper" and len(network.dca.output_norms) == len(network.dca.features)
    assert build(nnUNetTrainerDCA).dca.merge == "residual"


def test_the_plans_dca_block_reaches_the_network():
    plans = make_plans()
    plans["configurations"]["2d"]["dca"] = {"stages": 2, "spatial_heads": 2, "max_tokens": 64}
    network = build(nnUNetTrainerDCA, plans=plans)
    assert network.stages == 2
    assert network.dca.max_tokens == 64
    assert network.dca.blocks[0].spatial_attentions[0].heads == 2


@pytest.mark.parametrize("trainer, check", [
    (nnUNetTrainerDCA_FullGrid, lambda dca: dca.max_tokens is None),
    (nnUNetTrainerDCA_CCAOnly, lambda dca: dca.blocks[0].spatial_attentions is None
                                           and dca.blocks[0].channel_attentions is not None),
    (nnUNetTrainerDCA_SCAOnly, lambda dca: dca.blocks[0].channel_attentions is None
                                           and dca.blocks[0].spatial_attentions is not None),
])
def test_ablations_override_the_plans_block_and_keep_the_rest(trainer, check):
    plans = make_plans()
    plans["configurations"]["2d"]["dca"] = {"max_tokens": 64, "n_blocks": 2}
    dca = build(trainer, plans=plans).dca
    assert check(dca)
    assert len(dca.blocks) == 2


def test_an_unknown_key_in_the_plans_block_is_named():
    plans = make_plans()
    plans["configurations"]["2d"]["dca"] = {"blocks": 2}
    with pytest.raises(ValueError, match=r"\['blocks'\]"):
        build(nnUNetTrainerDCA, plans=plans)


def test_a_network_without_encoder_skips_is_refused_by_name():
    plans = make_plans()
    plans["configurations"]["2d"]["architecture"]["network_class_name"] = f"plans_examples.{NotAUNet.__name__}"
    with pytest.raises(TypeError, match="NotAUNet does not expose U-Net skip connections"):
        build(nnUNetTrainerDCA, plans=plans)


def test_a_plans_route_configuration_is_not_wrapped_again(tmp_path):
    plans_file = tmp_path / "plans.json"
    plans_file.write_text(json.dumps(make_plans()))
    add_dca_configuration(str(plans_file))
    plans = json.loads(plans_file.read_text())
    with pytest.raises(TypeError, match="already has DCA.*stock nnUNetTrainer"):
        build(nnUNetTrainerDCA, "2d_dca", plans)


def test_the_epoch_family_matches_nnunets():
    stock_suffixes = {name[len("nnUNetTrainer"):] for name in dir(nnUNetTrainer_Xepochs)
                      if re.fullmatch(r"nnUNetTrainer_\d+epochs?", name)}
    ours = {name[len("nnUNetTrainerDCA"):]: getattr(trainers_module, name) for name in dir(trainers_module)
            if re.fullmatch(r"nnUNetTrainerDCA_\d+epochs?", name)}
    assert set(ours) == stock_suffixes
    for suffix, trainer in ours.items():
        assert trainer.epochs == int(re.search(r"\d+", suffix).group())


@pytest.fixture
def nnunet_folders(tmp_path, monkeypatch):
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(variable, str(tmp_path / variable))


@pytest.mark.parametrize("trainer, epochs", [(nnUNetTrainerDCA_5epochs, 5), (nnUNetTrainerDCA, 1000)])
def test_a_trainer_instance_has_its_epochs_and_nnunets_init_args(nnunet_folders, trainer, epochs):
    plans = {**make_plans(), "continue_training": False}  # run_training adds this key, __init__ pops it
    instance = trainer(plans, "2d", 0, DATASET_JSON, torch.device("cpu"))
    assert instance.num_epochs == epochs
    assert instance.my_init_kwargs["configuration"] == "2d"  # what checkpoints store as init_args


def test_a_checkpoint_of_an_initialized_trainer_holds_and_restores_dca(nnunet_folders, tmp_path):
    # nnUNetTrainer.initialize looks at the preprocessed folder's file type to pick its dataset class
    data_folder = tmp_path / "nnUNet_preprocessed" / "Dataset999_Tiny" / "nnUNetPlans_2d"
    data_folder.mkdir(parents=True)
    (data_folder / "case.b2nd").touch()

    def initialized_trainer():
        trainer = nnUNetTrainerDCA_5epochs({**make_plans(), "continue_training": False}, "2d", 0, DATASET_JSON,
                                           torch.device("cpu"))
        trainer.initialize()
        return trainer

    trained = initialized_trainer()
    with torch.no_grad():
        trained.network.dca.output_convs[0].bias.fill_(0.5)  # a weight the fresh trainer does not have
    trained.save_checkpoint(str(tmp_path / "checkpoint.pth"))
    resumed = initialized_trainer()
    resumed.load_checkpoint(str(tmp_path / "checkpoint.pth"))

    expected, restored = trained.network.state_dict(), resumed.network.state_dict()
    assert any(key.startswith("dca.") for key in restored)
    assert all(torch.equal(restored[key], value) for key, value in expected.items())


def test_nnunet_finds_the_trainers_on_nnunet_exttrainer(monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", trainer_dir())
    found = recursive_find_trainer_class_by_name("nnUNetTrainerDCA_FullGrid")
    assert found.__name__ == "nnUNetTrainerDCA_FullGrid"
    assert found.dca_overrides == {"max_tokens": None}


def test_a_users_subclass_in_another_folder_is_found_and_builds(monkeypatch, tmp_path):
    user_folder = tmp_path / "my_trainers"
    user_folder.mkdir()
    (user_folder / "my_dca_trainers.py").write_text(textwrap.dedent("""
        from nnunet_dca.trainers.nnUNetTrainerDCA import nnUNetTrainerDCA_5epochs

        class nnUNetTrainerDCA_TwoBlocks_5epochs(nnUNetTrainerDCA_5epochs):
            dca_overrides = {"n_blocks": 2}
    """))
    monkeypatch.setenv("nnUNet_extTrainer", trainer_dir() + os.pathsep + str(user_folder))
    found = recursive_find_trainer_class_by_name("nnUNetTrainerDCA_TwoBlocks_5epochs")
    assert found.epochs == 5
    assert len(build(found).dca.blocks) == 2


def test_trainer_dir_is_this_package_folder():
    assert os.path.isfile(os.path.join(trainer_dir(), "nnUNetTrainerDCA.py"))
    assert os.path.isabs(trainer_dir())


# the resolved settings a model folder keeps

def new_trainer(trainer=nnUNetTrainerDCA_5epochs, plans: dict | None = None, fold: int = 0):
    # run_training adds continue_training, __init__ pops it
    return trainer({**(plans or make_plans()), "continue_training": False}, "2d", fold, DATASET_JSON,
                   torch.device("cpu"))


def save_model_folder_plans(trainer) -> None:
    """What nnUNetTrainer.on_train_start writes at the start of every fold."""
    os.makedirs(trainer.output_folder_base, exist_ok=True)
    with open(os.path.join(trainer.output_folder_base, "plans.json"), "w") as f:
        json.dump(trainer.plans_manager.plans, f)


def test_the_plans_a_trainer_saves_hold_every_dca_setting_with_its_overrides(nnunet_folders):
    plans = make_plans()
    plans["configurations"]["2d"]["dca"] = {"max_tokens": 64}
    trainer = new_trainer(nnUNetTrainerDCA_SCAOnly, plans)
    saved = trainer.plans_manager.plans["configurations"]["2d"][RESOLVED_KEY]
    assert saved == {**DEFAULTS, "max_tokens": 64, "channel_attention": False}
    assert json.loads(json.dumps(saved)) == saved  # JSON as it is


def test_a_model_folder_builds_from_its_saved_settings_when_the_defaults_change(nnunet_folders, monkeypatch):
    trainer = new_trainer()
    model_folder_plans = PlansManager(json.loads(json.dumps(trainer.plans_manager.plans)))
    monkeypatch.setitem(DEFAULTS, "max_tokens", 16)
    monkeypatch.setitem(DEFAULTS, "spatial_heads", 2)
    network = nnUNetTrainerDCA_5epochs.build_network_architecture(
        model_folder_plans, model_folder_plans.get_configuration("2d"), 1, NUM_CLASSES, False)
    assert network.dca.max_tokens == 1024
    assert network.dca.blocks[0].spatial_attentions[0].heads == 4


def test_a_model_folder_builds_from_its_saved_settings_when_a_variants_overrides_change(nnunet_folders,
                                                                                         monkeypatch):
    trainer = new_trainer(nnUNetTrainerDCA_FullGrid)
    model_folder_plans = PlansManager(json.loads(json.dumps(trainer.plans_manager.plans)))
    monkeypatch.setattr(nnUNetTrainerDCA_FullGrid, "dca_overrides", {"max_tokens": 256})
    network = nnUNetTrainerDCA_FullGrid.build_network_architecture(
        model_folder_plans, model_folder_plans.get_configuration("2d"), 1, NUM_CLASSES, False)
    assert network.dca.max_tokens is None
    # and a new fold with the new overrides is refused
    save_model_folder_plans(trainer)
    with pytest.raises(RuntimeError, match=r"max_tokens: null there, 256 now"):
        new_trainer(nnUNetTrainerDCA_FullGrid, fold=1)


def test_a_resolved_block_in_the_plans_given_is_not_taken_for_this_trainers(nnunet_folders):
    plans = json.loads(json.dumps(new_trainer(nnUNetTrainerDCA_SCAOnly).plans_manager.plans))  # copied back
    trainer = new_trainer(nnUNetTrainerDCA_CCAOnly, plans=plans)
    assert trainer.plans_manager.plans["configurations"]["2d"][RESOLVED_KEY]["channel_attention"] is True
    assert trainer.plans_manager.plans["configurations"]["2d"][RESOLVED_KEY]["spatial_attention"] is False


def test_a_fold_with_the_settings_of_its_model_folder_starts(nnunet_folders):
    save_model_folder_plans(new_trainer(fold=0))
    plans = make_plans()
    plans["configurations"]["2d"]["dca"] = {"max_tokens": 1024}  # the default, written out
    assert new_trainer(plans=plans, fold=1).fold == 1


def test_a_fold_with_other_settings_than_its_model_folder_is_refused_naming_them(nnunet_folders):
    plans = make_plans()
    plans["configurations"]["2d"]["dca"] = {"token_grid": [4, 4], "n_blocks": 2}
    save_model_folder_plans(new_trainer(plans=plans, fold=0))
    plans["configurations"]["2d"]["dca"] = {"n_blocks": 2}  # the block edited later
    with pytest.raises(RuntimeError, match=r"token_grid: \[4, 4\] there, null now.*new trainer name.*plans "
                                           r"identifier") as refused:
        new_trainer(plans=plans, fold=1)
    assert "n_blocks" not in str(refused.value)


def test_a_model_folder_without_saved_settings_is_not_compared(nnunet_folders):
    legacy = new_trainer(fold=0)
    del legacy.plans_manager.plans["configurations"]["2d"][RESOLVED_KEY]
    save_model_folder_plans(legacy)
    plans = make_plans()
    plans["configurations"]["2d"]["dca"] = {"n_blocks": 2}
    assert new_trainer(plans=plans, fold=1).plans_manager.plans["configurations"]["2d"][RESOLVED_KEY]["n_blocks"] == 2


def test_a_model_folder_saved_before_the_merge_key_builds_and_continues_as_the_paper(nnunet_folders):
    legacy = new_trainer()
    del legacy.plans_manager.plans["configurations"]["2d"][RESOLVED_KEY]["merge"]  # as nnunet-dca wrote it before
    model_folder_plans = PlansManager(json.loads(json.dumps(legacy.plans_manager.plans)))
    network = nnUNetTrainerDCA.build_network_architecture(
        model_folder_plans, model_folder_plans.get_configuration("2d"), 1, NUM_CLASSES, False)
    assert network.dca.merge == "paper"
    save_model_folder_plans(legacy)
    with pytest.raises(RuntimeError, match='merge: "paper" there, "residual" now'):
        new_trainer(fold=1)
    plans = copy.deepcopy(legacy.plans_manager.plans)
    del plans["configurations"]["2d"][RESOLVED_KEY]
    plans["configurations"]["2d"]["dca"] = {"merge": "paper"}
    continued = new_trainer(plans=plans, fold=1)
    assert continued.plans_manager.plans["configurations"]["2d"][RESOLVED_KEY]["merge"] == "paper"
