"""scripts/reproduce.py: every recipe's quick run ends in a report with the recipe's rows and the
published numbers; the fused model starts from the trained streams' checkpoints; a study killed
after its first stream resumes without re-training it; a changed fusion setting re-runs only
the fused stage; extraction settings that disagree with the data root stop the study before
training, naming the setting."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fusion.data.synthetic import make_synthetic
from fusion.recipes import extraction_argv, list_recipes, load_recipe, recorded_extraction

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("feichtenhofer2016", "seed000", "seed001", "seed002", "seed003", "seed004",
           "simonyan2014")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny synthetic data: 4 classes, 3 groups of 2 clips (16 training, 8 test videos)."""
    return make_synthetic(tmp_path_factory.mktemp("reproduce") / "data", groups=3,
                          clips_per_group=2, height=40, width=48, min_frames=8,
                          max_frames=12, seed=4)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def report_rows(out: Path) -> dict[str, dict[str, str]]:
    lines = [line for line in (out / "report.md").read_text().splitlines()
             if line.startswith("| ")]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines]
    return {row[0]: dict(zip(rows[0], row)) for row in rows[1:]}


def check_report(recipe_name: str, out: Path, cells: list[str]) -> None:
    """The report has every row of the recipe with a number for each cell, the published
    number beside it and the difference, a picture, and each stage's provenance."""
    recipe = load_recipe(recipe_name)
    rows = report_rows(out)
    assert list(rows) == [row.name for row in recipe.rows]
    saved = json.loads((out / "report.json").read_text())
    for row, got in zip(recipe.rows, saved["rows"]):
        line = rows[row.name]
        assert line["published"] == ("-" if row.published is None else f"{row.published:g}")
        assert sorted(got["values"]) == sorted(cells)
        assert all(v is not None for v in got["values"].values()), (row.name, got)
        # ours is the stage's own test result, read back independently
        for cell, value in got["values"].items():
            metrics = json.loads((out / cell / row.stage / "metrics.json").read_text())
            assert value == pytest.approx(100 * metrics["test"][row.output]["accuracy"])
        if row.published is not None:
            assert float(line["ours - published"]) == pytest.approx(
                got["mean"] - row.published, abs=0.051)
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.md").read_text()
    assert "## Provenance" in text and "- code: " in text
    for cell in cells:
        for stage in recipe.stages:
            line = next(x for x in text.splitlines() if x.startswith(f"- `{cell}/{stage}`"))
            assert "; commit " in line and "; ran `" in line and "; tested `" in line
    saved_state = json.loads((out / cells[0] / next(iter(recipe.stages)) / "stage.json")
                             .read_text())
    assert saved_state["commit"] in text


def check_inits(recipe_name: str, out: Path, cell: str) -> None:
    """Every fused stage started from the checkpoints its upstream stages tested."""
    for stage in load_recipe(recipe_name).stages.values():
        if not stage.init:
            continue
        saved = (out / cell / stage.name / "config.toml").read_text()
        for stream, source in stage.init.items():
            tested = json.loads((out / cell / source / "metrics.json").read_text())["checkpoint"]
            assert f'init_{stream} = "{tested}"' in saved, (stage.name, stream)


def test_every_recipe_loads_and_list_names_each(load_script, capsys):
    assert sorted(list_recipes()) == sorted(RECIPES)
    assert load_script("reproduce").main(["--list"]) == 0
    printed = capsys.readouterr().out
    for name in RECIPES:
        recipe = load_recipe(name)
        assert f"{name}: {recipe.title}" in printed
        assert recipe.waves()[0] and all(row.stage in recipe.stages for row in recipe.rows)


@pytest.mark.parametrize("name", [r for r in RECIPES if r != "seed000"])  # seed000: below
def test_quick_run_of_every_recipe_ends_in_a_report_with_its_rows(name, data, tmp_path,
                                                                   load_script):
    recipe = load_recipe(name)
    splits = ["--splits", "1,2"] if name == "simonyan2014" else \
        ["--splits", "1"] if recipe.splits else []
    out = tmp_path / name
    code = load_script("reproduce").main([name, "--quick", "--data-root", str(data), "--out",
                                          str(out), "--launcher", "inline", *splits])
    assert code == 0
    cells = ["split1_seed0", "split2_seed0"] if name == "simonyan2014" else \
        ["split1_seed0"] if recipe.splits else ["seed0"]
    check_report(name, out, cells)
    check_inits(name, out, cells[0])
    if name == "simonyan2014":  # two splits: a column each, mean +- std over them
        row = report_rows(out)["two-stream, averaging"]
        assert "split 1" in row and "split 2" in row and "+-" in row["mean +- std (n)"]


def test_a_killed_study_resumes_without_retraining_its_first_stream_and_a_fusion_change_reruns_only_the_fused_stage(
        data, tmp_path, load_script, capsys):
    out = tmp_path / "seed000"
    argv = ["seed000", "--quick", "--data-root", str(data), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "reproduce.py"), *argv],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    rgb = out / "split1_seed0" / "rgb" / "metrics.json"
    deadline = time.monotonic() + 240
    while not rgb.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the study and the stage it is running
    process.wait()
    assert rgb.is_file() and not (out / "report.md").exists()
    trained_at = rgb.stat().st_mtime_ns

    reproduce = load_script("reproduce")
    assert reproduce.main([*argv, "--launcher", "inline"]) == 0
    printed = capsys.readouterr().out
    assert "split1_seed0/rgb: done before, skipped" in printed
    assert rgb.stat().st_mtime_ns == trained_at
    check_report("seed000", out, ["split1_seed0"])
    check_inits("seed000", out, "split1_seed0")

    streams = {s: (out / "split1_seed0" / s / "metrics.json").stat().st_mtime_ns
               for s in ("rgb", "flow")}
    assert reproduce.main([*argv, "--launcher", "inline", "--set", "fusion_weights=1 2"]) == 0
    printed = capsys.readouterr().out
    assert "split1_seed0/rgb: done before, skipped" in printed
    assert "split1_seed0/flow: done before, skipped" in printed
    assert "split1_seed0/fused: made under other settings, set aside as fused." in printed
    assert {s: (out / "split1_seed0" / s / "metrics.json").stat().st_mtime_ns
            for s in streams} == streams
    assert "fusion_weights = [1.0, 2.0]" in (out / "split1_seed0" / "fused" /
                                             "config.toml").read_text()
    # and unchanged settings run nothing at all
    assert reproduce.main([*argv, "--launcher", "inline", "--set", "fusion_weights=1 2"]) == 0
    assert capsys.readouterr().out.count("done before, skipped") == 3
    # going back to the first settings restores their fused run, set aside, instead of
    # training it again; nothing finished was deleted on the way
    assert reproduce.main([*argv, "--launcher", "inline"]) == 0
    printed = capsys.readouterr().out
    assert "split1_seed0/fused: restored from fused." in printed
    assert sorted(p.name.split(".")[0] for p in (out / "split1_seed0").iterdir()) == \
        ["flow", "fused", "fused", "rgb"]
    # a stream trained again (its folder lost) makes the fused model run again: its numbers
    # came from the old stream's checkpoint
    import shutil
    shutil.rmtree(out / "split1_seed0" / "rgb")
    assert reproduce.main([*argv, "--launcher", "inline"]) == 0
    printed = capsys.readouterr().out
    assert "split1_seed0/flow: done before, skipped" in printed
    assert "split1_seed0/fused: done before" not in printed


def test_extraction_settings_that_disagree_with_the_data_root_stop_before_training(
        tmp_path, load_script, capsys):
    root = tmp_path / "data"
    (root / "jpegs_256").mkdir(parents=True)
    (root / "extraction.json").write_text(json.dumps(
        {"flow_method": "dis", "flow_bound": 20.0, "short_side": 256, "pad_square": False,
         "flow_pairs": "consecutive", "flow_format": "uv"}))
    out = tmp_path / "study"
    code = load_script("reproduce").main(["seed000", "--quick", "--data-root", str(root),
                                          "--out", str(out), "--launcher", "inline"])
    assert code == 1
    error = capsys.readouterr().err
    assert "recipe seed000 extracts with flow_method = 'tvl1'" in error
    assert str(root / "extraction.json") in error and "'dis'" in error
    assert not out.exists()  # nothing ran


def test_bad_input_is_refused_before_any_stage_folder_is_touched(tmp_path, load_script,
                                                                  capsys):
    main = load_script("reproduce").main
    out = tmp_path / "study"
    cases = [
        (["seed001", "--data-root", str(tmp_path)], "give --data-root stanford40=PATH"),
        (["seed001", "--data-root", f"kinetics={tmp_path}"],
         "reads no data named 'kinetics' (it reads stanford40)"),
        (["seed000", "--data-root", str(tmp_path / "nowhere")],
         f"data root {tmp_path / 'nowhere'} does not exist"),
        (["seed000", "--set", "seed=3"], "the study sets seed itself"),
        (["seed000", "--set", "init_rgb=x.pt"], "the study sets init_rgb itself"),
        (["seed000", "--set", "lr"], "expected KEY=VALUE"),
        (["seed000", "--set", "learning_rate=1"], "unknown option 'learning_rate'"),
        (["seed000", "--parallel", "0"], "--parallel 0: must be >= 1"),
        (["seed004", "--splits", "1"], "has no official splits"),
        (["seed000", "--splits", "4"], "are not official splits"),
        (["seed000", "--quick", "--videos", str(tmp_path)], "--videos and --quick"),
        (["seed9"], "no recipe 'seed9'"),
    ]
    for argv, message in cases:
        assert main([*argv, "--out", str(out)]) == 1, argv
        assert message in capsys.readouterr().err, argv
    assert not out.exists()


def test_the_recipes_extraction_is_what_extract_frames_records(load_script):
    """A recipe's [extraction] becomes extract_frames.py arguments its parser takes, and the
    settings those arguments record are the ones the study checks extraction.json against."""
    extract = load_script("extract_frames")
    for name in RECIPES:
        recipe = load_recipe(name)
        args = extract.parse(extraction_argv(recipe, Path("videos"), Path("out")))
        assert extract.settings_of(args).recorded() == recorded_extraction(recipe), name
        assert (args.layout, args.store) == (recipe.extraction.get("layout", "ucf101"),
                                             recipe.extraction.get("store", "loose"))


def test_with_videos_the_study_extracts_first_as_the_recipe_says_then_trains_and_skips_both_when_run_again(
        tmp_path, load_script, capsys):
    """--videos: extract_frames.py writes the data root with the recipe's flow method (here
    DIS, folder layout), extraction.json records it, the stage trains on it; a second run
    redoes neither."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(0)
    for label, (cls, step) in enumerate((("Still", 0), ("Drift", 2))):
        (tmp_path / "videos" / cls).mkdir(parents=True)
        for n in range(5):
            texture = cv2.resize(rng.uniform(0, 255, (12, 16, 3)), (80, 40),
                                 interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
            writer = cv2.VideoWriter(str(tmp_path / "videos" / cls / f"{cls}{n}.avi"),
                                     cv2.VideoWriter_fourcc(*"MJPG"), 25, (48, 40))
            for k in range(8):
                writer.write(np.ascontiguousarray(texture[:, step * k:step * k + 48]))
            writer.release()
    recipe = tmp_path / "own_videos.toml"
    recipe.write_text(f'''
title = "RGB stream on own videos, DIS flow"
splits = []
[extraction]
flow = "dis"
short_side = 40
layout = "folder"
[stages.rgb]
config = "{ROOT / 'configs' / 'synthetic_demo.toml'}"
set = {{ dataset = "folder", fuse = "none", stream = "rgb", flow_method = "dis", short_side = 40, image_size = 32, epochs = 1, batch_size = 4, workers = 0, eval_clips = 1, val_fraction = 0.2, device = "cpu" }}
[[rows]]
name = "RGB"
stage = "rgb"
output = "rgb"
''')
    root, out = tmp_path / "data", tmp_path / "study"
    argv = [str(recipe), "--videos", str(tmp_path / "videos"), "--data-root", str(root),
            "--out", str(out), "--launcher", "inline"]
    reproduce = load_script("reproduce")
    assert reproduce.main(argv) == 0
    recorded = json.loads((root / "extraction.json").read_text())
    assert (recorded["flow_method"], recorded["short_side"]) == ("dis", 40)
    assert len(list((root / "Drift").iterdir())) == 5
    saved = json.loads((out / "report.json").read_text())
    assert saved["rows"][0]["values"]["seed0"] is not None
    assert '"flow_method": "dis"' in (out / "report.md").read_text()  # the provenance
    capsys.readouterr()
    assert reproduce.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"extraction into {root} is done" in printed
    assert "seed0/rgb: done before, skipped" in printed
