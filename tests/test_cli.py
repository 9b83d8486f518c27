"""The `nnunet-dca` command's fast paths: trainer-dir, doctor, add-config, warm-start and the demo's refusals
(seconds). Every refusal is one line on stderr, `nnunet-dca COMMAND: error: ...`, and leaves the files as they were."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

import nnunet_dca.allocator
import nnunet_dca.compare.workflow
import nnunet_dca.demo
import nnunet_dca.doctor
import nnunet_dca.trainers
from conftest import run
from nnunet_dca.cli import main
from nnunet_dca.demo import nnunet_command
from nnunet_dca.trainers import trainer_dir
from nnunet_dca.trainers.nnUNetTrainerDCA import nnUNetTrainerDCA
from plans_examples import (
    DATASET_JSON,
    NUM_CLASSES,
    PATCH_SIZES,
    PRIMUS_3D,
    cascade_plans,
    make_plans,
    single_thread,  # noqa: F401 (autouse)
)

NNUNET_PATHS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


@pytest.fixture
def nnunet_folders(tmp_path, monkeypatch):
    """nnU-Net's three folders, empty, and nnUNet_extTrainer set as the README says."""
    for variable in NNUNET_PATHS:
        (tmp_path / variable).mkdir()
        monkeypatch.setenv(variable, str(tmp_path / variable))
    monkeypatch.setenv("nnUNet_extTrainer", trainer_dir())
    return tmp_path


@pytest.fixture
def plans_file(nnunet_folders):
    """A planned dataset 999 (Dataset999_Tiny) with 2d, 3d_fullres and 2d_resenc configurations."""
    path = nnunet_folders / "nnUNet_preprocessed" / "Dataset999_Tiny" / "nnUNetPlans.json"
    path.parent.mkdir()
    path.write_text(json.dumps(make_plans(), indent=4))
    return path


@pytest.fixture
def user_plans_file(plans_file, capsys):
    """plans_file after `add-config 999` (2d_dca), with configurations a user may add beside: 3d_fullres_bs4
    (inherits 3d_fullres), 2d_dca_stock (inherits 2d_dca, with the stock U-Net) and 3d_primus (not a U-Net);
    and the dataset.json nnU-Net's planning puts beside the plans."""
    assert main(["add-config", "999"]) == 0
    capsys.readouterr()
    plans = json.loads(plans_file.read_text())
    configurations = plans["configurations"]
    configurations["3d_fullres_bs4"] = {"inherits_from": "3d_fullres", "batch_size": 4}
    configurations["2d_dca_stock"] = {"inherits_from": "2d_dca", "architecture": configurations["2d"]["architecture"]}
    configurations["3d_primus"] = {"inherits_from": "3d_fullres", "architecture": PRIMUS_3D}
    plans_file.write_text(json.dumps(plans, indent=4))
    (plans_file.parent / "dataset.json").write_text(json.dumps(DATASET_JSON))
    return plans_file


def build_network(trainer: type, configuration: str, input_channels: int = 1, plans: dict | None = None
                  ) -> torch.nn.Module:
    plans_manager = PlansManager(plans or make_plans())
    return trainer.build_network_architecture(plans_manager, plans_manager.get_configuration(configuration),
                                              input_channels, NUM_CLASSES)


def save_checkpoint(path: Path, trainer: type = nnUNetTrainer, configuration: str = "2d",
                    input_channels: int = 1) -> None:
    """What nnU-Net's training saves, as far as -pretrained_weights reads it: the network's state dict."""
    torch.save({"network_weights": build_network(trainer, configuration, input_channels).state_dict()}, path)


@pytest.fixture
def stock_checkpoint(user_plans_file, tmp_path):
    """A checkpoint of the stock nnUNetTrainer on Dataset999_Tiny's 2d configuration."""
    path = tmp_path / "stock.pth"
    save_checkpoint(path)
    return path


def assert_one_line_error(stderr: str, command: str, message: str) -> None:
    assert stderr.startswith(f"nnunet-dca {command}: error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr, stderr


# trainer-dir

def test_trainer_dir_is_the_installed_trainers_package(capsys):
    assert main(["trainer-dir"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == os.path.dirname(os.path.abspath(nnunet_dca.trainers.__file__))
    assert os.path.isfile(os.path.join(printed, "nnUNetTrainerDCA.py"))


@pytest.mark.parametrize("before, after", [
    (None, []),
    ("", []),
    (os.pathsep.join(["/a", "/b"]), ["/a", "/b"]),
    (os.pathsep.join(["/a", trainer_dir(), "/b"]), ["/a", "/b"]),  # moved first, not repeated
])
def test_export_puts_the_trainer_dir_first_and_keeps_the_users_folders(monkeypatch, capsys, before, after):
    if before is None:
        monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    else:
        monkeypatch.setenv("nnUNet_extTrainer", before)
    assert main(["trainer-dir", "--export"]) == 0
    assert capsys.readouterr().out.strip().split(os.pathsep) == [trainer_dir(), *after]


def test_the_console_script_is_installed_in_this_environment():
    assert run(["nnunet-dca", "trainer-dir"]).strip() == trainer_dir()


# doctor

def test_doctor_passes_on_the_readme_set_up(nnunet_folders, capsys):
    assert main(["doctor"]) == 0
    *checks, allocator = capsys.readouterr().out.splitlines()
    assert len(checks) == 6 and all(line.startswith("OK") for line in checks), checks
    assert allocator.split()[1:3] == ["memory", "allocator:"], allocator


@pytest.fixture
def on_cpu(monkeypatch):
    """No CUDA GPU, so nnU-Net would run on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("library, fix", [
    ("/opt/lib/libtcmalloc_minimal.so.4", "export LD_PRELOAD=/opt/lib/libtcmalloc_minimal.so.4"),
    (None, "apt-get install libtcmalloc-minimal4 (Debian, Ubuntu) or conda install -c conda-forge gperftools, "
           "then export LD_PRELOAD=/path/to/libtcmalloc_minimal.so.4"),
], ids=["tcmalloc installed", "tcmalloc missing"])
def test_doctor_hints_at_tcmalloc_on_the_cpu_under_glibc_malloc_and_still_passes(nnunet_folders, on_cpu, monkeypatch,
                                                                                 capsys, library, fix):
    monkeypatch.setattr(nnunet_dca.doctor, "current_allocator", lambda: "glibc malloc")
    monkeypatch.setattr(nnunet_dca.allocator, "find_library", lambda allocator: library)
    assert main(["doctor"]) == 0
    hint = capsys.readouterr().out.splitlines()[-1]
    assert hint.startswith("HINT memory allocator: glibc malloc;"), hint
    assert "up to about 2x faster training steps under tcmalloc (docs/cpu.md)" in hint
    assert hint.endswith(f": {fix}"), hint


def test_doctor_is_content_with_tcmalloc_on_the_cpu(nnunet_folders, on_cpu, monkeypatch, capsys):
    monkeypatch.setattr(nnunet_dca.doctor, "current_allocator", lambda: "tcmalloc")
    assert main(["doctor"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("OK   memory allocator: tcmalloc ")


def test_doctor_leaves_the_allocator_to_pytorch_on_a_gpu(nnunet_folders, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(nnunet_dca.doctor, "current_allocator", lambda: "glibc malloc")
    assert main(["doctor"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("OK   memory allocator: glibc malloc") and "PyTorch's caching allocator" in line, line


def test_doctor_reports_a_pytorch_that_does_not_import_in_the_allocator_line(nnunet_folders, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # its import now raises ImportError
    main(["doctor"])
    assert "PyTorch does not import" in capsys.readouterr().out.splitlines()[-1]


def test_doctor_says_what_to_fix(nnunet_folders, monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw")
    monkeypatch.setenv("nnUNet_results", str(nnunet_folders / "missing"))
    monkeypatch.setenv("nnUNet_extTrainer", str(nnunet_folders))
    assert main(["doctor"]) == 1
    failures = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert len(failures) == 4, failures
    assert "nnUNet_raw is not set: export nnUNet_raw=" in failures[0]
    assert f"mkdir -p {nnunet_folders / 'missing'}" in failures[1]
    assert 'export nnUNet_extTrainer="$(nnunet-dca trainer-dir --export)"' in failures[2]
    assert "Could not find requested nnunet trainer nnUNetTrainerDCA" in failures[3]


def test_doctor_reports_an_nnunet_that_does_not_import_as_a_failed_check(nnunet_folders, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nnunet_dca.warm_start", None)  # its import now raises ImportError
    assert main(["doctor"]) == 1
    failures = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert len(failures) == 1 and "nnU-Net does not import" in failures[0], failures


def test_doctor_flags_a_stale_copy_that_nnunet_would_load_instead(nnunet_folders, monkeypatch, capsys):
    stale = nnunet_folders / "old_trainers"
    stale.mkdir()
    (stale / "old_dca.py").write_text(textwrap.dedent("""
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        class nnUNetTrainerDCA(nnUNetTrainer):
            def build_network_architecture(*args, **kwargs):
                raise NotImplementedError
    """))
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([str(stale), trainer_dir()]))
    assert main(["doctor"]) == 1
    assert f"FAIL nnU-Net finds nnUNetTrainerDCA in {stale}, not in" in capsys.readouterr().out


# add-config

def test_add_config_writes_the_dca_block_and_prints_the_train_command(plans_file, capsys):
    assert main(["add-config", "999", "--name", "2d_dca", "--spatial-heads", "2", "--max-tokens", "none",
                 "--token-grid", "8", "6", "--no-channel-attention"]) == 0
    configuration = json.loads(plans_file.read_text())["configurations"]["2d_dca"]
    assert configuration["inherits_from"] == "2d"
    dca = configuration["architecture"]["arch_kwargs"]["dca"]
    assert (dca["spatial_heads"], dca["max_tokens"], dca["token_grid"], dca["channel_attention"]) == \
        (2, None, [8, 6], False)
    assert dca["n_blocks"] == 1 and dca["merge"] == "residual"  # options left out keep the defaults
    out = capsys.readouterr().out
    assert str(plans_file) in out and "nnUNetv2_train 999 2d_dca 0\n" in out


def test_add_config_writes_the_papers_merge_when_asked(plans_file):
    assert main(["add-config", "999", "--merge", "paper"]) == 0
    assert json.loads(plans_file.read_text())["configurations"]["2d_dca"]["architecture"]["arch_kwargs"]["dca"][
        "merge"] == "paper"


def test_add_config_writes_the_score_normalizations_when_asked(plans_file):
    assert main(["add-config", "999", "--channel-scores", "qk_norm", "--spatial-scores", "qk_norm",
                 "--temperature", "2"]) == 0
    dca = json.loads(plans_file.read_text())["configurations"]["2d_dca"]["architecture"]["arch_kwargs"]["dca"]
    assert (dca["channel_scores"], dca["spatial_scores"], dca["temperature"]) == ("qk_norm", "qk_norm", 2.0)


def test_add_config_refuses_a_temperature_that_is_not_positive(plans_file, capsys):
    assert main(["add-config", "999", "--temperature", "0"]) != 0
    assert "dca 'temperature'" in capsys.readouterr().err


def test_add_config_names_the_plans_identifier_in_the_train_command(plans_file, capsys):
    plans_file.rename(plans_file.with_name("nnUNetResEncUNetMPlans.json"))
    assert main(["add-config", "Dataset999_Tiny", "-p", "nnUNetResEncUNetMPlans", "-c", "3d_fullres"]) == 0
    assert "nnUNetv2_train Dataset999_Tiny 3d_fullres_dca 0 -p nnUNetResEncUNetMPlans" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    (["-c", "3d_lowres"], "configuration '3d_lowres' is not in"),
    (["--name", "2d"], "a name other than its source '2d'"),
    (["--name", "2d_new", "--n-blocks", "0"], "dca 'n_blocks' must be a positive integer"),
    (["--name", "2d_new", "--spatial-heads", "3"], "spatial_heads=3 at stage 0 must divide"),
    ([], "configuration '2d_dca' already exists"),
    (["-c", "2d_dca", "--name", "2d_new"], "configuration '2d_dca' already uses DCA"),
    (["-c", "3d_primus"], "Primus does not expose U-Net skip connections"),
    # the stock 3d_fullres replaced by a configuration inheriting from one that inherits from it: a cycle
    (["-c", "3d_fullres_bs4", "--name", "3d_fullres", "--overwrite"], "'3d_fullres' was not made by nnunet-dca"),
    # a DCA configuration may be replaced, but not by one inheriting from it
    (["-c", "2d_dca_stock", "--name", "2d_dca", "--overwrite"], "configuration '2d_dca' would not resolve"),
])
def test_add_config_refusals_are_one_line_and_leave_the_plans_byte_for_byte(user_plans_file, capsys, arguments,
                                                                             message):
    before = user_plans_file.read_bytes()
    assert main(["add-config", "999", *arguments]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_line_error(captured.err, "add-config", message)
    assert user_plans_file.read_bytes() == before
    plans_manager = PlansManager(str(user_plans_file))
    for configuration in plans_manager.available_configurations:
        plans_manager.get_configuration(configuration)  # they resolve as they stand: the change was refused


def test_the_console_script_refuses_in_one_line_where_a_library_warns(user_plans_file):
    # a fresh process, which imports Primus, and with it timm, which warns of a torch deprecation on import
    result = subprocess.run([nnunet_command("nnunet-dca"), "add-config", "999", "-c", "3d_primus"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert_one_line_error(result.stderr, "add-config", "Pick a U-Net configuration as the source (-c).")


def command_line(command: str, dataset: str, checkpoint: Path, *options: str) -> list[str]:
    """`command` on `dataset`; warm-start from `checkpoint` on the 2d configuration."""
    if command == "add-config":
        return ["add-config", dataset, *options]
    return ["warm-start", str(checkpoint), "-d", dataset, "-c", "2d", "-o", str(checkpoint.with_name("warm.pth")),
            *options]


@pytest.mark.parametrize("command", ["add-config", "warm-start"])
@pytest.mark.parametrize("dataset, plans_text, options, message", [
    ("998", None, [], "no dataset '998' in nnUNet_preprocessed="),
    ("Hippocampus", None, [], "no dataset 'Hippocampus' in nnUNet_preprocessed="),
    ("999", None, ["-p", "nnUNetResEncUNetLPlans"], "plans found for this dataset: ['nnUNetPlans']"),
    ("999", '{"configurations": ', [], "nnUNetPlans.json is not valid JSON"),
    ("999", "[]", [], "nnUNetPlans.json is not an nnU-Net plans file"),
])
def test_dataset_and_plans_refusals_are_one_line(stock_checkpoint, user_plans_file, capsys, command, dataset,
                                                 plans_text, options, message):
    if plans_text is not None:
        user_plans_file.write_text(plans_text)
    before = user_plans_file.read_bytes()
    assert main(command_line(command, dataset, stock_checkpoint, *options)) == 2
    assert_one_line_error(capsys.readouterr().err, command, message)
    assert user_plans_file.read_bytes() == before


@pytest.mark.parametrize("command", ["add-config", "warm-start"])
def test_an_unset_nnunet_preprocessed_is_one_line(stock_checkpoint, monkeypatch, capsys, command):
    monkeypatch.delenv("nnUNet_preprocessed")
    assert main(command_line(command, "999", stock_checkpoint)) == 2
    assert_one_line_error(capsys.readouterr().err, command, "nnUNet_preprocessed is not set; export it")


def test_add_config_replaces_a_configuration_only_with_overwrite(plans_file, capsys):
    assert main(["add-config", "999"]) == 0
    assert main(["add-config", "999", "--n-blocks", "2"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["add-config", "999", "--n-blocks", "2", "--overwrite"]) == 0
    dca = json.loads(plans_file.read_text())["configurations"]["2d_dca"]["architecture"]["arch_kwargs"]["dca"]
    assert dca["n_blocks"] == 2


def train_fold(nnunet_folders: Path, model: str, checkpoint: str = "checkpoint_final.pth") -> Path:
    """A model folder of Dataset999_Tiny in nnUNet_results with fold 0 trained, as far as its checkpoint's name goes;
    returns the model folder."""
    fold = nnunet_folders / "nnUNet_results" / "Dataset999_Tiny" / model / "fold_0"
    fold.mkdir(parents=True)
    (fold / checkpoint).write_bytes(b"")
    return fold.parent


@pytest.mark.parametrize("model, checkpoint", [
    ("nnUNetTrainer__nnUNetPlans__2d_dca", "checkpoint_final.pth"),
    ("nnUNetTrainer__nnUNetPlans__2d_dca", "checkpoint_latest.pth"),  # cut off: --c resumes it from the plans
    ("nnUNetTrainerDCA_5epochs__nnUNetPlans__2d_dca", "checkpoint_best.pth"),  # any trainer
])
@pytest.mark.parametrize("arguments, changed", [
    (["--n-blocks", "2"], "architecture"),
    (["--merge", "paper"], "architecture"),
    (["-c", "3d_fullres", "--name", "2d_dca"],
     "architecture, data_identifier, median_image_size_in_voxels, patch_size, spacing"),
])
def test_add_config_overwrite_of_a_configuration_with_trained_folds_is_refused_if_it_changes_it(
        user_plans_file, capsys, model, checkpoint, arguments, changed):
    model_folder = train_fold(user_plans_file.parents[2], model, checkpoint)
    before = user_plans_file.read_bytes()
    assert main(["add-config", "999", *arguments, "--overwrite"]) == 2
    assert_one_line_error(capsys.readouterr().err, "add-config",
                          f"configuration '2d_dca' has trained folds in {model_folder}, and this --overwrite would "
                          f"change its {changed}, which those models were trained with; nothing was written: add the "
                          f"new settings under another name (--name)")
    assert user_plans_file.read_bytes() == before


def test_add_config_overwrite_of_a_configuration_with_trained_folds_that_changes_nothing_is_written(user_plans_file):
    train_fold(user_plans_file.parents[2], "nnUNetTrainer__nnUNetPlans__2d_dca")
    configurations = json.loads(user_plans_file.read_text())["configurations"]
    assert main(["add-config", "999", "--overwrite"]) == 0
    assert json.loads(user_plans_file.read_text())["configurations"] == configurations


def test_add_config_overwrite_looks_only_at_trained_folds_of_the_same_plans_and_configuration(user_plans_file):
    nnunet_folders = user_plans_file.parents[2]
    train_fold(nnunet_folders, "nnUNetTrainer__nnUNetPlans__2d")
    train_fold(nnunet_folders, "nnUNetTrainer__nnUNetResEncUNetMPlans__2d_dca")
    train_fold(nnunet_folders, "nnUNetTrainer__nnUNetPlans__2d_dca", "debug.json")  # started, no checkpoint yet
    assert main(["add-config", "999", "--n-blocks", "2", "--overwrite"]) == 0
    assert json.loads(user_plans_file.read_text())["configurations"]["2d_dca"]["architecture"]["arch_kwargs"]["dca"][
        "n_blocks"] == 2


@pytest.mark.parametrize("lowres_next_stage, left", [
    ({"next_stage": "3d_cascade_fullres"}, {"next_stage": ["3d_cascade_fullres"]}),  # as nnU-Net's planner writes it
    ({}, {}),
])
def test_add_config_overwrite_of_a_cascade_configuration_by_another_source_leaves_the_previous_stage(
        plans_file, lowres_next_stage, left):
    plans_file.write_text(json.dumps(cascade_plans(lowres_next_stage)))
    assert main(["add-config", "999", "-c", "3d_cascade_fullres", "--name", "3d_dca"]) == 0
    assert PlansManager(str(plans_file)).get_configuration("3d_lowres").next_stage_names[-1] == "3d_dca"
    assert main(["add-config", "999", "-c", "3d_fullres", "--name", "3d_dca", "--overwrite"]) == 0
    written = json.loads(plans_file.read_text())["configurations"]
    assert written["3d_dca"]["inherits_from"] == "3d_fullres"
    assert written["3d_lowres"] == cascade_plans(left)["configurations"]["3d_lowres"]


# warm-start (a stock model fine-tuned by a DCA trainer through nnU-Net's -pretrained_weights)

def non_dca(weights: dict) -> dict:
    return {key: value for key, value in weights.items() if not key.startswith("dca.")}


@pytest.mark.parametrize("configuration, trainer", [
    ("2d", nnUNetTrainerDCA),    # the trainer route: -tr nnUNetTrainerDCA, the default
    ("2d_dca", nnUNetTrainer),  # the plans-only route: the stock trainer on the configuration add-config made
])
def test_warm_start_writes_the_stock_weights_and_fresh_dca_weights_that_nnunet_loads(
        user_plans_file, stock_checkpoint, tmp_path, capsys, configuration, trainer):
    before = stock_checkpoint.read_bytes()
    warm = tmp_path / "out" / "warm.pth"
    trainer_options = [] if trainer is nnUNetTrainerDCA else ["-tr", trainer.__name__]
    assert main(["warm-start", str(stock_checkpoint), "-d", "999", "-c", configuration, "-o", str(warm),
                 *trainer_options]) == 0
    assert f"-pretrained_weights {warm}" in capsys.readouterr().out
    assert stock_checkpoint.read_bytes() == before

    stock = torch.load(stock_checkpoint)["network_weights"]
    written = torch.load(warm)["network_weights"]
    assert non_dca(written).keys() == stock.keys()
    assert all(torch.equal(written[key], value) for key, value in stock.items())
    network = build_network(trainer, configuration, plans=json.loads(user_plans_file.read_text()))
    dca_keys = network.state_dict().keys() - stock.keys()
    assert dca_keys and all(key.startswith("dca.") for key in dca_keys) and written.keys() == stock.keys() | dca_keys

    load_pretrained_weights(network, str(warm))  # nnU-Net's own loader, as nnUNetv2_train -pretrained_weights runs it
    loaded = network.state_dict()
    # all but the segmentation layers, which nnU-Net's loader leaves at their fresh init
    assert all(torch.equal(loaded[key], value) for key, value in stock.items() if ".seg_layers." not in key)

    # the whole file is the stock model: DCA's fresh branch adds nothing yet, in training and in evaluation
    network.load_state_dict(written)
    stock_network = build_network(nnUNetTrainer, "2d")
    stock_network.load_state_dict(stock)
    x = torch.randn(2, 1, *PATCH_SIZES["2d"])
    for train in (True, False):
        with torch.no_grad():
            outputs, expected = network.train(train)(x), stock_network.train(train)(x)
        assert all(torch.equal(o, e) for o, e in zip(outputs, expected))


def checkpoint_of(trainer: type, configuration: str = "2d", input_channels: int = 1):
    return lambda path: save_checkpoint(path, trainer, configuration, input_channels)


@pytest.mark.parametrize("write_checkpoint, options, message", [
    pytest.param(lambda path: None, [], "stock.pth does not exist", id="missing"),
    pytest.param(lambda path: path.write_text("{}"), [], "stock.pth is not a PyTorch checkpoint", id="not torch"),
    pytest.param(lambda path: torch.save({"state_dict": {}}, path), [], "stock.pth is not an nnU-Net checkpoint",
                 id="not nnU-Net"),
    pytest.param(checkpoint_of(nnUNetTrainerDCA), [], "stock.pth already holds DCA weights", id="DCA"),
    pytest.param(checkpoint_of(nnUNetTrainer, "2d_resenc"), [], "missing encoder.stages.0", id="other configuration"),
    pytest.param(checkpoint_of(nnUNetTrainer, "2d", input_channels=2), [],
                 "encoder.stages.0.0.convs.0.conv.weight has shape", id="other data"),
    pytest.param(checkpoint_of(nnUNetTrainer), ["-tr", "nnUNetTrainer"], "nnUNetTrainer builds no DCA",
                 id="stock trainer"),
    pytest.param(checkpoint_of(nnUNetTrainer), ["-tr", "nnUNetTrainerDCA_Typo"],
                 "Could not find requested nnunet trainer nnUNetTrainerDCA_Typo", id="unknown trainer"),
    pytest.param(checkpoint_of(nnUNetTrainer), ["-c", "3d_lowres"], "configuration 3d_lowres not found",
                 id="unknown configuration"),
    pytest.param(checkpoint_of(nnUNetTrainer), ["-c", "3d_primus"],
                 "nnUNetTrainerDCA cannot build configuration '3d_primus': Primus", id="not a U-Net"),
])
def test_warm_start_refusals_are_one_line_and_write_nothing(user_plans_file, tmp_path, capsys, write_checkpoint,
                                                            options, message):
    checkpoint, warm = tmp_path / "stock.pth", tmp_path / "warm.pth"
    write_checkpoint(checkpoint)
    before = checkpoint.read_bytes() if checkpoint.exists() else None
    assert main(["warm-start", str(checkpoint), "-d", "999", "-c", "2d", "-o", str(warm), *options]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_line_error(captured.err, "warm-start", message)
    assert not warm.exists()
    assert (checkpoint.read_bytes() if checkpoint.exists() else None) == before


def test_warm_start_never_replaces_the_input_and_an_output_only_with_overwrite(stock_checkpoint, tmp_path, capsys):
    stock_bytes = stock_checkpoint.read_bytes()
    warm = tmp_path / "warm.pth"
    warm.write_bytes(b"mine")
    warm_start = ["warm-start", str(stock_checkpoint), "-d", "999", "-c", "2d", "-o"]
    assert main([*warm_start, str(warm)]) == 2
    assert_one_line_error(capsys.readouterr().err, "warm-start", f"{warm} exists; pass --overwrite")
    assert warm.read_bytes() == b"mine"
    assert main([*warm_start, str(stock_checkpoint), "--overwrite"]) == 2
    assert_one_line_error(capsys.readouterr().err, "warm-start", "is the input checkpoint")
    assert stock_checkpoint.read_bytes() == stock_bytes
    assert main([*warm_start, str(warm), "--overwrite"]) == 0
    assert non_dca(torch.load(warm)["network_weights"]).keys() == torch.load(stock_checkpoint)["network_weights"].keys()


# mistakes in the command line itself, found before anything is read

@pytest.mark.parametrize("arguments, command, message", [
    ([], "", "the following arguments are required: COMMAND"),
    (["train"], "", "invalid choice: 'train'"),
    (["trainer-dir", "--shell"], "", "unrecognized arguments: --shell"),
    (["doctor", "--fix"], "", "unrecognized arguments: --fix"),
    (["add-config"], " add-config", "the following arguments are required: DATASET"),
    (["add-config", "999", "--max-tokens", "lots"], " add-config", "positive integer or 'none'"),
    (["demo", "--device", "tpu"], " demo", "invalid choice: 'tpu'"),
    (["warm-start", "stock.pth", "-c", "2d", "-o", "warm.pth"], " warm-start", "required: -d"),
    (["compare", "999", "--folds", "all"], " compare", "argument --folds: fold 'all' trains on every case and has no "
                                                       "held-out validation to compare: give fold numbers"),
    (["compare", "999", "--folds", "first"], " compare", "expected a fold number, e.g. 0, got 'first'"),
    (["compare", "999", "--train", "slurm", "--array-limit", "0"], " compare",
     "argument --array-limit: expected a positive integer, got '0'"),
    (["compare", "999", "--train", "slurm", "--array-limit", "four"], " compare", "expected a positive integer"),
])
def test_usage_mistakes_are_one_line_that_points_to_help(plans_file, capsys, arguments, command, message):
    before = plans_file.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nnunet-dca{command}: error: ") and err.count("\n") == 1, err
    assert message in err and f"see nnunet-dca{command} --help" in err, err
    assert plans_file.read_bytes() == before


# demo refusals (the demo itself runs in test_end_to_end.py)

def test_demo_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert_one_line_error(capsys.readouterr().err, "demo", "is not an empty folder")
    assert os.listdir(tmp_path) == ["mine.txt"]


def test_demo_refuses_zero_iterations(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "new"), "--iterations", "0"]) == 2
    assert_one_line_error(capsys.readouterr().err, "demo", "--iterations must be at least 1")
    assert not (tmp_path / "new").exists()


def test_demo_refuses_an_out_folder_it_cannot_create(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep")
    assert main(["demo", "--out", str(tmp_path / "mine.txt" / "demo")]) == 2
    assert_one_line_error(capsys.readouterr().err, "demo", f"cannot create {tmp_path / 'mine.txt' / 'demo'}")
    assert os.listdir(tmp_path) == ["mine.txt"]


def test_a_failed_demo_step_is_one_line_with_the_logs_last_line(tmp_path, monkeypatch, capsys):
    failing = tmp_path / "nnUNetv2_failing"
    failing.write_text("#!/bin/sh\necho 'Traceback (most recent call last):'\necho 'ValueError: no cases found'\n"
                       "exit 3\n")
    failing.chmod(0o755)
    monkeypatch.setattr(nnunet_dca.demo, "nnunet_command", lambda name: str(failing))
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    log = tmp_path / "demo" / "logs" / "2_nnUNetv2_failing.log"
    assert_one_line_error(capsys.readouterr().err, "demo",
                          f"step 2 failed (exit code 3): ValueError: no cases found; the whole log: {log}")
    assert "ValueError: no cases found" in log.read_text()


# compare: refusals before anything is trained or written, and the SLURM script it would submit

@pytest.mark.parametrize("arguments, message", [
    (["998"], "unknown dataset 998"),
    (["999", "-c", "3d_lowres"], "unknown configuration '3d_lowres'"),
    (["999", "--trainers", "nnUNetTrainer", "nnUNetTrainerNoSuchThing"], "unknown trainer 'nnUNetTrainerNoSuchThing'"),
    (["999", "--trainers", "nnUNetTrainer"], "at least two trainers"),
    (["999", "--folds", "0", "5"], "fold 5 is out of range"),
    (["999", "--gpus", "0"], "--gpus applies to --train local only"),
    (["999", "--train", "local", "--partition", "gpu"], "--partition applies to --train slurm only"),
    (["999", "--train", "local", "-device", "cpu", "--gpus", "0"],
     "--gpus picks CUDA GPUs, and this is -device cpu: leave --gpus out to train on cpu, or use -device cuda"),
    (["999", "--train", "local", "-device", "mps", "--gpus", "0", "1"], "this is -device mps"),
    (["999", "--train", "local"], "is not preprocessed for training"),
    (["999", "--train", "slurm"], "--train slurm with -device cuda needs a GPU per task: add --gres gpu:1 (or --gres "
                                  "none where the cluster hands out GPUs another way, e.g. by partition), or use "
                                  "-device cpu"),
    (["999", "--train", "slurm", "--partition", "gpu", "--dry-run"], "add --gres gpu:1"),
    (["999", "--train", "slurm", "--dry-run", "--gres", ""], "add --gres gpu:1"),  # an empty variable, say
    (["999", "--train", "slurm", "--dry-run", "--sbatch-arg=--mem=32G"], "add --gres gpu:1"),
])
def test_compare_refusals_are_one_line_and_write_nothing(plans_file, tmp_path, capsys, arguments, message):
    out = tmp_path / "comparison"
    assert main(["compare", *arguments, "--out", str(out)]) == 2
    assert_one_line_error(capsys.readouterr().err, "compare", message)
    assert not out.exists()
    assert not any((plans_file.parents[2] / "nnUNet_results").iterdir())


@pytest.fixture
def preprocessed_2d(plans_file):
    """plans_file with the 2d configuration preprocessed (one case) and its dataset.json, as training needs."""
    data = plans_file.parent / "nnUNetPlans_2d"
    data.mkdir()
    (data / "case_000.pkl").write_bytes(b"")
    (plans_file.parent / "dataset.json").write_text(json.dumps(DATASET_JSON))
    return plans_file


def test_compare_dry_run_prints_the_job_array_and_submits_nothing(preprocessed_2d, tmp_path, capsys):
    out = tmp_path / "comparison"
    arguments = ["compare", "999", "--folds", "0", "1", "--train", "slurm", "--dry-run", "--gres", "gpu:1",
                 "--out", str(out)]
    assert main(arguments) == 0
    script = capsys.readouterr().out
    assert f"#   nnunet-dca {' '.join(arguments)}\n" in script  # main's arguments, not the interpreter's
    assert "#SBATCH --array=0-3" in script and "#SBATCH --gres=gpu:1" in script
    assert script.count("nnUNetTrainerDCA -p nnUNetPlans -device cuda") == 2
    assert 'exec "$nnunet_dca" train-fold "${arguments[@]}"\n' in script  # each task trains under its fold's lock
    assert not (out / "slurm").exists()
    assert (out / "report.md").is_file()  # the report of what exists: nothing trained yet


@pytest.mark.parametrize("options, device", [(["--gres", "none"], "cuda"), (["-device", "cpu"], "cpu")])
def test_compare_dry_run_has_no_gres_line_with_gres_none_or_on_the_cpu(preprocessed_2d, tmp_path, capsys, options,
                                                                       device):
    assert main(["compare", "999", "--folds", "0", "--train", "slurm", "--dry-run", *options,
                 "--out", str(tmp_path / "comparison")]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --array=0-1" in script and "#SBATCH --gres" not in script
    assert script.count(f"-device {device})") == 2


@pytest.mark.parametrize("request_line", ["--gres=gpu:1", "--gpus 1", "--gpus-per-node=2", "--gpus-per-task=1",
                                          "-G 1", "-G1"])
def test_compare_dry_run_accepts_a_gpu_request_given_through_sbatch_arg(preprocessed_2d, tmp_path, capsys,
                                                                         request_line):
    assert main(["compare", "999", "--folds", "0", "--train", "slurm", "--dry-run", f"--sbatch-arg={request_line}",
                 "--out", str(tmp_path / "comparison")]) == 0
    script = capsys.readouterr().out
    assert f"#SBATCH {request_line}\n" in script
    assert script.count("#SBATCH --gres") == request_line.startswith("--gres")  # no second --gres line of ours


def test_ctrl_c_during_compare_is_one_line_and_exit_code_130(plans_file, tmp_path, capsys, monkeypatch):
    def interrupted(*arguments, **options):
        raise KeyboardInterrupt  # as Ctrl-C during the trainings, after local.py has stopped them

    monkeypatch.setattr(nnunet_dca.compare.workflow, "compare", interrupted)
    try:
        code = main(["compare", "999", "--out", str(tmp_path / "comparison")])
    except KeyboardInterrupt:  # caught here, or it would stop pytest itself
        pytest.fail("Ctrl-C left main as a KeyboardInterrupt traceback")
    assert code == 130
    assert capsys.readouterr().err == "nnunet-dca compare: interrupted (Ctrl-C)\n"
