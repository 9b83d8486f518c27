"""The one-shot GPU check (benchmarks/gpu_check.py) in its CPU mode, on the demo's dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_dca.demo import TASK_ID

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
HIPPOCAMPUS_PLANS = ROOT.parent / "shared" / "plans" / "Dataset004_Hippocampus"
SECTIONS = ["environment", "sdpa", "trainer_step", "trainer_step_amp", "trainer_step_compile", "inference",
            "training_data", "training_stock", "training_dca", "tests"]


def check(out: Path, *options: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--device", "cpu", *options], cwd=ROOT,
                          env=env, capture_output=True, text=True)


@pytest.mark.e2e
@pytest.mark.skipif(not HIPPOCAMPUS_PLANS.is_dir(), reason=f"needs nnU-Net's real plans at {HIPPOCAMPUS_PLANS}")
def test_the_cpu_flow_reports_every_section_and_goes_on_past_one_that_runs_out_of_time(demo, tmp_path):
    out = tmp_path / "check"
    # inference gets one second: it runs out of time, and the sections after it must run all the same
    done = check(out, "--nnunet-dataset", str(TASK_ID), "--timeout", "inference=1", env=demo.env())
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert f"report: {out / 'gpu_check.md'}" in done.stdout
    report = (out / "gpu_check.md").read_text()
    sections = {section["name"]: section for section in json.loads((out / "gpu_check.json").read_text())["sections"]}
    assert list(sections) == SECTIONS
    assert all(f"\n## {name}: " in report for name in SECTIONS), report

    assert "torch" in sections["environment"]["figures"]
    backends, dispatch = sections["sdpa"]["figures"]
    assert {row["config"] for row in backends["rows"]} == {"Dataset004_Hippocampus 2d"}  # the CPU flow's only one
    assert all("_scaled_dot_product" in row["ATen attention ops"] for row in dispatch["rows"]), dispatch
    for name in ("trainer_step", "trainer_step_amp"):
        [table] = sections[name]["figures"]
        assert "FLOP floor" in table["header"] and len(table["rows"]) == 1, table
    assert "| FLOP floor |" in report
    assert "--compile" in sections["trainer_step_compile"]["skipped"]
    assert sections["inference"]["timed_out"] and sections["inference"]["returncode"] is None
    assert "--nnunet-dataset" in sections["training_data"]["skipped"]
    for name, trainer in (("training_stock", "nnUNetTrainer_gpucheck"), ("training_dca", "nnUNetTrainerDCA_gpucheck")):
        assert sections[name]["returncode"] == 0, sections[name]["output_tail"]
        assert sections[name]["figures"]["epoch_time_s"] > 0 and not sections[name]["figures"]["compiled"]
        assert f"| {trainer} | no | " in report
    assert sections["tests"]["returncode"] == 0 and sections["tests"]["figures"].get("failed") is None

    wrong = check(tmp_path / "wrong", "--timeout", "no_such_section=1")
    assert wrong.returncode == 2 and "'no_such_section' is not a section" in wrong.stderr
