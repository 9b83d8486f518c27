"""The `nnunet-dca` command's fast paths: trainer-dir, doctor, add-config and the demo's refusals (seconds)."""

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest

import nnunet_dca.trainers
from conftest import run
from nnunet_dca.cli import main
from nnunet_dca.trainers import trainer_dir
from plans_examples import make_plans

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


@pytest.mark.e2e
def test_a_wheel_of_the_repo_ships_the_trainers_and_serves_trainer_dir(tmp_path):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", tmp_path / "wheel", Path(__file__).parents[1]], check=True)
    venv.create(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run([*pip, "--python", python, "install", "--no-deps", *(tmp_path / "wheel").glob("*.whl")], check=True)
    # the dependencies (torch, nnunetv2) from this environment; a path added by a .pth file is not itself scanned
    # for .pth files, so this environment's editable install of the package stays out
    site_packages = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        check=True, capture_output=True, text=True).stdout.strip())
    (site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"])
    printed = subprocess.run([python.parent / "nnunet-dca", "trainer-dir"], check=True, capture_output=True,
                             text=True).stdout.strip()
    assert Path(printed) == site_packages / "nnunet_dca" / "trainers"
    assert (Path(printed) / "nnUNetTrainerDCA.py").is_file()


# doctor

def test_doctor_passes_on_the_readme_set_up(nnunet_folders, capsys):
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and all(line.startswith("OK") for line in lines), lines


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
    assert (dca["spatial_heads"], dca["max_tokens"], dca["token_grid"], dca["channel_attention"]) == (2, None, [8, 6], False)
    assert dca["n_blocks"] == 1  # options left out keep the defaults
    out = capsys.readouterr().out
    assert str(plans_file) in out and "nnUNetv2_train 999 2d_dca 0\n" in out


def test_add_config_names_the_plans_identifier_in_the_train_command(plans_file, capsys):
    plans_file.rename(plans_file.with_name("nnUNetResEncUNetMPlans.json"))
    assert main(["add-config", "Dataset999_Tiny", "-p", "nnUNetResEncUNetMPlans", "-c", "3d_fullres"]) == 0
    assert "nnUNetv2_train Dataset999_Tiny 3d_fullres_dca 0 -p nnUNetResEncUNetMPlans" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    (["-c", "3d_lowres"], "configuration '3d_lowres' is not in"),
    (["--n-blocks", "0"], "dca 'n_blocks' must be a positive integer"),
    (["-p", "nnUNetResEncUNetLPlans"], "plans found for this dataset: ['nnUNetPlans']"),
])
def test_add_config_errors_say_what_to_change(plans_file, capsys, arguments, message):
    before = plans_file.read_text()
    assert main(["add-config", "999", *arguments]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and "Traceback" not in captured.err
    assert plans_file.read_text() == before


def test_add_config_refuses_an_unknown_dataset(nnunet_folders, capsys):
    assert main(["add-config", "998"]) == 2
    assert "998" in capsys.readouterr().err


def test_add_config_replaces_a_configuration_only_with_overwrite(plans_file, capsys):
    assert main(["add-config", "999"]) == 0
    assert main(["add-config", "999", "--n-blocks", "2"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["add-config", "999", "--n-blocks", "2", "--overwrite"]) == 0
    dca = json.loads(plans_file.read_text())["configurations"]["2d_dca"]["architecture"]["arch_kwargs"]["dca"]
    assert dca["n_blocks"] == 2


def test_add_config_rejects_a_bad_max_tokens_before_reading_plans(plans_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["add-config", "999", "--max-tokens", "lots"])
    assert exit_info.value.code == 2
    assert "positive integer or 'none'" in capsys.readouterr().err


# demo refusals (the demo itself runs in test_end_to_end.py)

def test_demo_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["mine.txt"]


def test_demo_refuses_zero_iterations(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "new"), "--iterations", "0"]) == 2
    assert "--iterations must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
