"""scripts/gpu_check.py: its quick mode runs every section on the CPU, writes the report and the
table, and a section that fails is reported without stopping the others; where OpenCV lacks
its contrib modules (as on the GPU machine), the comparison says so and TV-L1 still runs."""
import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusion.config import Config
from fusion.fusers import FUSIONS

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["fusions", "step", "loader", "decode", "tvl1", "extract", "raft", "nccl", "train",
            "compile"]


def test_quick_run_checks_every_section_and_reports_a_failure_without_stopping(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                   "")])}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--quick",
         "--footage", "generated", "--fail-section", "step", "--out", str(out),
         "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-4000:]  # step failed
    report = json.loads((out / "gpu_check.json").read_text())
    sections = report["sections"]
    assert list(sections) == SECTIONS

    # the failure made on purpose is named, and every other section still ran and passed
    assert sections["step"]["status"] == "fail"
    assert "made to fail on purpose" in sections["step"]["reason"]
    part2 = "decode" in {f.name for f in dataclasses.fields(Config)}
    for name, section in sections.items():
        if name == "step" or (name == "decode" and not part2):
            continue
        failed = [r for r in section["rows"] if r.get("status") == "fail"]
        assert section["status"] == "pass" and not failed, (name, section)
    if not part2:
        assert sections["decode"]["status"] == "skipped"
        assert "decode on device not in this checkout" in sections["decode"]["reason"]

    def rows(name):
        return {r["what"]: r for r in sections[name]["rows"]}
    fusions = rows("fusions")
    for name, cls in FUSIONS.items():  # each at an inner and the last tap, where it can be
        taps = ["scores"] if cls.late else ["layer3", "layer4"]
        for tap in taps:
            row = fusions[f"{name} at {tap}"]
            expected = "skipped" if cls.pooled and tap == "layer3" else "pass"
            assert row["status"] == expected, row
            if expected == "pass":
                assert "eager loss" in row["result"] and "compiled vs eager" in row["result"]
    loader = rows("loader")
    assert loader["run_epoch from JPEG frames, decode on the CPU"]["value"] > 0
    # the bare step, measured here since its own section failed
    assert loader["run_epoch as a share of the bare step"]["value"] > 0
    assert rows("tvl1")["bare kernel, batch 1"]["value"] > 0
    assert "within 2 levels" in rows("tvl1")["against OpenCV's TV-L1"]["result"]
    extract = rows("extract")
    assert extract["extract_frames.py --flow tvl1-torch --device cpu"]["status"] == "pass"
    assert extract["extract_frames.py, batch 2, 1 threads"]["value"] > 0
    raft = rows("raft")
    for model in ("small", "large"):
        assert raft[f"RAFT-{model}"]["status"] == "pass"
        assert raft[f"RAFT-{model}, batch 1"]["value"] > 0
    assert rows("nccl")["torchrun + NCCL"]["reason"].startswith("NCCL needs CUDA")
    assert [r["status"] for r in sections["train"]["rows"]] == ["pass", "pass"]
    assert report["footage"] == "generated" and report["machine"]["device"] == "cpu"

    # one Markdown table, the machine in its heading, also written beside the JSON
    table = (out / "gpu_check.md").read_text()
    assert table.strip() in done.stdout
    assert table.startswith(f"#### GPU check: CPU only (")
    assert f"{len(os.sched_getaffinity(0))} cores" in table.splitlines()[0]
    assert f"torch {torch.__version__}" in table.splitlines()[0]
    assert "| section | check or figure | result | settings, command |" in table
    assert "| step | the section | **fail**: RuntimeError: made to fail on purpose" in table
    assert "| fusions | conv3d at layer3 | pass (eager loss" in table
    assert "| train | train_fusion.py --resume, to epoch 2 | pass" in table


@pytest.fixture
def gpu_check(monkeypatch):
    """The script as a module (registered in sys.modules, as its dataclass needs)."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)
    spec.loader.exec_module(module)
    return module


def test_tvl1_without_opencv_contrib_is_skipped_not_failed(gpu_check, tmp_path, monkeypatch):
    import cv2

    monkeypatch.delattr(cv2, "optflow", raising=False)  # the GPU machine's OpenCV
    args = argparse.Namespace(quick=True, footage="generated")
    run = gpu_check.Run(args, gpu_check.QUICK, torch.device("cpu"), tmp_path, tmp_path)
    section = gpu_check.Section("tvl1")
    gpu_check.section_tvl1(run, section)
    rows = {r["what"]: r for r in section.rows}
    assert rows["against OpenCV's TV-L1"] == {
        "kind": "check", "what": "against OpenCV's TV-L1", "how": "", "status": "skipped",
        "reason": "OpenCV without contrib (cv2.optflow absent)",
        "seconds": rows["against OpenCV's TV-L1"]["seconds"]}
    assert rows["tvl1-torch on 1 pair, eager"]["status"] == "pass"
    assert rows["bare kernel, batch 1"]["value"] > 0


def test_unknown_section_names_the_valid_ones(gpu_check):
    with pytest.raises(SystemExit, match="unknown section.*valid: fusions, step"):
        gpu_check.main(["--only", "fusion", "--device", "cpu"])
