"""Training end to end on a tiny synthetic dataset: runs, resume, NaN handling, evaluation."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import fusion.build
import fusion.engine
from fusion.config import build_parser, resolve
from fusion.data.synthetic import make_synthetic
from fusion.checkpoint import load_checkpoint, save_atomic, weights_only
from fusion.engine import train
from fusion.evaluate import aggregate
from fusion.lock import locked
from tests.fakes import fake_ucf101

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("tiny"), groups=3, clips_per_group=2,
                          height=40, width=48, min_frames=6, max_frames=10, seed=2)


def flags(tiny, logdir, *extra):
    return ["--data-root", str(tiny), "--logdir", str(logdir), "--image-size", "32",
            "--flow-stack", "2", "--batch-size", "4", "--epochs", "2", "--workers", "0",
            "--optimizer", "adam", "--lr", "1e-3", "--val-fraction", "0.25",
            "--eval-clips", "2", *extra]


def config_of(argv):
    return resolve(build_parser().parse_args(argv))


def test_train_and_evaluate_end_to_end(tiny, tmp_path, capsys, load_script, monkeypatch):
    # two epochs on 8 videos end near chance, where no epoch need be the best (a validation
    # loss below ln 4): every one is here, so that best.pt exists
    monkeypatch.setattr(fusion.engine, "is_better", lambda *args: True)
    code = load_script("train_fusion").main(flags(tiny, tmp_path, "--fuse", "conv1x1", "--at",
                                                   "layer4", "--keep-spatial-head",
                                                   "--run-name", "fused"))
    assert code == 0
    run = tmp_path / "fused"
    for name in ("config.toml", "last.pt", "best.pt", "metrics.json"):
        assert (run / name).is_file(), name
    assert not (run / ".lock").exists()  # the finished run released its folder
    assert 'fuse = "conv1x1"' in (run / "config.toml").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]) == {"fused", "rgb"}
    assert metrics["protocol"] == {"clips": 2, "crops": "center", "aggregate": "mean-softmax",
                                   "videos": 8}
    confusion = torch.tensor(metrics["test"]["fused"]["confusion"])
    assert confusion.shape == (4, 4) and confusion.sum() == 8
    assert metrics["test"]["fused"]["accuracy"] == pytest.approx(confusion.trace().item() / 8)
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["epoch"] == 2 and checkpoint["config"]["fuse"] == "conv1x1"
    # last.pt holds what a resume needs, best.pt what evaluation and fine-tuning need
    assert set(checkpoint) >= {"model", "optimizer", "scheduler", "scaler", "rng"}
    best = load_checkpoint(run / "best.pt")
    assert {"model", "config", "classes", "best", "epoch"} <= set(best)
    assert not {"optimizer", "scheduler", "scaler", "rng"} & set(best)
    assert not (run / "last.prev.pt").exists()  # needed only while the run goes on
    printed = capsys.readouterr().out
    assert "best epoch" in printed
    assert re.search(r"CPU threads: \d+ in the main process \(.*\), which also loads the data "
                     r"\(no loader workers\)", printed)  # the split, in the run's log

    events = EventAccumulator(str(run)).Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("loss/train/fused", "accuracy/val/fused", "accuracy/val/rgb",
                "speed/clips_per_s/train", "lr"):
        assert tag in scalars, tag
    # TensorBoard sorts tag groups by name: accuracy and loss first, then the LR
    assert sorted({tag.split("/")[0] for tag in scalars}) == ["accuracy", "loss", "lr", "speed"]
    # the test accuracy first among the HParams tab's metric columns (every scalar, sorted)
    assert sorted(scalars)[0] == "accuracy/test/fused"
    # and the pictures after the LR: TensorBoard's first page opens only the first two groups
    groups = sorted({tag.split("/")[0] for tag in scalars + events.Tags()["images"]})
    assert groups[:2] == ["accuracy", "loss"]
    # 8 training videos (the other training group of each class validates), batches of 4
    assert len(events.Scalars("lr")) == 2 * 2
    assert {"samples/rgb", "samples/flow", "samples/rgb_and_flow", "test/confusion_fused",
            "test/confusion_rgb", "test/per_class"} <= set(events.Tags()["images"])
    for name in ("confusion_fused", "confusion_rgb", "per_class"):  # beside metrics.json
        assert (run / f"{name}.png").stat().st_size > 0

    # evaluate.py: another protocol on the same checkpoint, to a file of its own named by the
    # protocol, never over the training-time metrics.json
    trained = (run / "metrics.json").read_bytes()
    assert load_script("evaluate").main(["--checkpoint", str(run / "best.pt"), "--crops", "ten",
                                         "--aggregate", "vote", "--workers", "0"]) == 0
    assert (run / "metrics.json").read_bytes() == trained
    out = run / "metrics_best_2-clips_ten-crops_vote.json"
    ten = json.loads(out.read_text())
    assert ten["protocol"]["crops"] == "ten" and ten["protocol"]["aggregate"] == "vote"
    printed = capsys.readouterr().out
    assert "confusion matrix" in printed and "RedUp" in printed and str(out) in printed
    assert (run / f"{out.stem}_confusion_fused.png").is_file()  # its own pictures, by its name
    assert load_script("evaluate").main(["--checkpoint", str(run / "best.pt"), "--out",
                                         str(run / "metrics.json")]) == 1
    assert "is the run's own test result" in capsys.readouterr().err
    assert (run / "metrics.json").read_bytes() == trained


def test_single_stream_then_fusion_from_its_checkpoints(tiny, tmp_path, load_script,
                                                        monkeypatch):
    train_fusion = load_script("train_fusion").main
    # one epoch on 8 videos stays near chance, where no epoch need be the best: every one is
    monkeypatch.setattr(fusion.engine, "is_better", lambda *args: True)
    for stream in ("rgb", "flow"):  # as a sweep keeps its finished runs: best.pt alone
        assert train_fusion(flags(tiny, tmp_path, "--fuse", "none", "--stream", stream,
                                  "--run-name", stream, "--epochs", "1", "--keep", "best")) == 0
        assert sorted(p.name for p in (tmp_path / stream).glob("*.pt")) == ["best.pt"]
    inits = ["--init-rgb", str(tmp_path / "rgb" / "best.pt"),
             "--init-flow", str(tmp_path / "flow" / "best.pt"), "--freeze", "streams"]
    assert train_fusion(flags(tiny, tmp_path, "--fuse", "conv1x1", "--at", "layer3", *inits,
                              "--epochs", "1", "--run-name", "conv")) == 0
    rgb = load_checkpoint(tmp_path / "rgb" / "best.pt")["model"]
    fused = load_checkpoint(tmp_path / "conv" / "last.pt")["model"]
    # frozen streams: the fused model's RGB tower is still the trained RGB stream
    for key, value in rgb.items():
        assert torch.equal(fused["rgb." + key[len("stream."):]], value), key
    assert json.loads((tmp_path / "rgb" / "metrics.json").read_text())["test"].keys() == \
        {"fused", "rgb"}

    # TensorBoard: a single stream's curves and pictures are its own, none called fused; the
    # HParams row (in the run itself: no second run per run) holds the settings chosen for it,
    # no fusion keys, and its test accuracy, with no hparam/ charts on the Scalars page
    events = EventAccumulator(str(tmp_path / "rgb")).Reload()
    tags = events.Tags()["scalars"] + events.Tags()["images"]
    assert "accuracy/val/rgb" in tags and "test/confusion_rgb" in tags
    assert not [t for t in tags if "fused" in t or t.startswith("hparam")]
    assert [t for t in events.Tags()["scalars"] if "/test/" in t] == ["accuracy/test/rgb"]
    assert not (tmp_path / "rgb" / "test").exists()
    chosen = hparams_of(events)
    assert chosen["fuse"] == "none" and chosen["stream"] == "rgb"
    assert chosen["image_size"] == 32 and chosen["optimizer"] == "adam" and chosen["epochs"] == 1
    assert not {"at", "at_flow", "flow", "flow_stack", "momentum", "run_name", "logdir"} & \
        set(chosen)
    assert "aggregate" not in chosen  # the default: the same for every run
    assert chosen["seed"] == 0  # a sweep's seed-0 run reads 0 beside its seed-1 neighbour
    conv = hparams_of(EventAccumulator(str(tmp_path / "conv")).Reload())
    assert conv["fuse"] == "conv1x1" and conv["at"] == "layer3" and conv["stream"] == "rgb+flow"
    # A frozen model with nothing left to train is an error, not a silent no-op.
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(config_of(flags(tiny, tmp_path, "--fuse", "sum", "--at", "layer3", *inits,
                              "--run-name", "sum")))


def hparams_of(events) -> dict:
    """A run's row in TensorBoard's HParams tab, read from its session start summary."""
    from tensorboard.plugins.hparams import metadata
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    start = metadata.parse_session_start_info_plugin_data(content)
    return {name: getattr(value, value.WhichOneof("kind"))
            for name, value in start.hparams.items()}


def final_weights(run):
    return load_checkpoint(run / "last.pt")["model"]


@pytest.mark.parametrize("workers", [0, 2])
def test_stopped_and_resumed_run_equals_an_uninterrupted_one(tiny, tmp_path, workers):
    common = ["--fuse", "conv1x1", "--at", "layer4", "--dropout", "0.5", "--workers",
              str(workers), "--schedule", "step", "--step-size", "1"]
    train(config_of(flags(tiny, tmp_path, *common, "--epochs", "3", "--run-name", "straight")))
    train(config_of(flags(tiny, tmp_path, *common, "--epochs", "2", "--run-name", "stopped")))
    resumed = config_of(["--resume", str(tmp_path / "stopped"), "--epochs", "3"])
    train(resumed, overrides={"resume": str(tmp_path / "stopped"), "epochs": 3})
    straight, stopped = final_weights(tmp_path / "straight"), final_weights(tmp_path / "stopped")
    assert load_checkpoint(tmp_path / "stopped" / "last.pt")["epoch"] == 3
    for key, value in straight.items():
        assert torch.equal(value, stopped[key]), key


def test_history_records_the_lr_each_epoch_used_and_a_longer_resume_rebuilds_cosine(
        tiny, tmp_path, capsys):
    """Cosine over E epochs: epoch k (0-based) trains at lr (1 + cos(pi k / E)) / 2. A run of
    2 epochs resumed with --epochs 4 continues on the 4-epoch curve, never rising again."""
    lr = 1e-3
    common = ["--fuse", "sum", "--at", "layer4", "--schedule", "cosine", "--lr", str(lr)]
    train(config_of(flags(tiny, tmp_path, *common, "--epochs", "2", "--run-name", "cos")))

    def curve(epochs, k):
        return lr * (1 + math.cos(math.pi * k / epochs)) / 2
    history = load_checkpoint(tmp_path / "cos" / "last.pt")["history"]
    assert [h["lr"] for h in history] == pytest.approx([curve(2, 0), curve(2, 1)])
    capsys.readouterr()
    train(config_of(["--resume", str(tmp_path / "cos"), "--epochs", "4"]),
          overrides={"resume": str(tmp_path / "cos"), "epochs": 4})
    assert "schedule 'cosine' rebuilt for 4 epochs (was 2)" in capsys.readouterr().out
    history = load_checkpoint(tmp_path / "cos" / "last.pt")["history"]
    assert [h["lr"] for h in history[2:]] == pytest.approx([curve(4, 2), curve(4, 3)])
    assert history[3]["lr"] < history[2]["lr"]


def test_resume_refuses_architecture_changes_and_runs_do_not_overwrite(tiny, tmp_path):
    train(config_of(flags(tiny, tmp_path, "--fuse", "sum", "--epochs", "1", "--run-name", "a")))
    with pytest.raises(ValueError, match="cannot change fuse when resuming"):
        train(config_of(["--resume", str(tmp_path / "a")]),
              overrides={"resume": str(tmp_path / "a"), "fuse": "max"})
    with pytest.raises(FileExistsError, match="already holds a run; resume it with --resume"):
        train(config_of(flags(tiny, tmp_path, "--fuse", "sum", "--run-name", "a")))
    weights = tmp_path / "a" / "weights.pt"  # what best.pt holds
    save_atomic(weights_only(load_checkpoint(tmp_path / "a" / "last.pt")), weights)
    with pytest.raises(ValueError, match="weights.pt holds weights only .* resume from the "
                                         "run's last.pt"):
        train(config_of(["--resume", str(weights)]))


def test_a_run_folder_in_use_stops_a_second_run_at_once_naming_folder_and_holder(
        tiny, tmp_path, capsys, load_script):
    """Two trainings with one --run-name: the first holds the folder's lock (here this very
    process), the second stops before writing anything."""
    with locked(tmp_path / "busy"):
        code = load_script("train_fusion").main(flags(tiny, tmp_path, "--run-name", "busy"))
        assert code == 1
        err = capsys.readouterr().err
        assert f"error: {tmp_path / 'busy'} is in use by pid {os.getpid()} on " in err
        assert list((tmp_path / "busy").iterdir()) == [tmp_path / "busy" / ".lock"]


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch,
                                                                   capsys, load_script):
    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        # two calls a step (fused and rgb outputs); an epoch trains (2 steps) and validates
        # (2 steps); epoch 3's second batch (step 1) turns NaN
        return loss * float("nan") if calls["n"] > 18 else loss
    monkeypatch.setattr(fusion.engine.F, "cross_entropy", poisoned)
    code = load_script("train_fusion").main(flags(tiny, tmp_path, "--fuse", "none",
                                                   "--run-name", "nan", "--epochs", "4"))
    assert code == 1
    err = capsys.readouterr().err
    # read SYNC_EVERY steps late, the message still names the first bad step
    assert "loss became nan at step 1 in epoch 3" in err
    assert f"last good checkpoint is {tmp_path / 'nan' / 'last.pt'}" in err
    kept = load_checkpoint(tmp_path / "nan" / "last.pt")
    assert kept["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    # the checkpoint it replaced is kept too, as a way on should last.pt be damaged
    assert load_checkpoint(tmp_path / "nan" / "last.prev.pt")["epoch"] == 1
    assert not (tmp_path / "nan" / "metrics.json").exists()
    assert not [p for p in (tmp_path / "nan").iterdir() if p.name.endswith(".tmp")]


def test_a_finite_but_exploding_loss_is_reported_as_divergence(tiny, tmp_path, capsys,
                                                               load_script):
    """Adam at lr 1e6: the loss stays finite (about 1e14) but is garbage; it stops the run like
    a NaN, and nothing is saved as best."""
    code = load_script("train_fusion").main(flags(tiny, tmp_path, "--fuse", "none", "--lr",
                                                   "1e6", "--run-name", "boom", "--epochs", "1"))
    assert code == 1
    err = capsys.readouterr().err
    assert "over 10000 times a uniform guess's (1.39): diverged in epoch 1; stopped" in err
    assert not (tmp_path / "boom" / "best.pt").exists()


def test_an_epoch_no_better_than_guessing_is_never_the_best(tiny, tmp_path, monkeypatch,
                                                            capsys):
    """Validation losses far above a uniform guess's (ln 4) but finite: no epoch becomes the
    best, the first included; the run tests last.pt and says why."""
    real = torch.nn.functional.cross_entropy

    def garbage_in_validation(*args, **kwargs):
        loss = real(*args, **kwargs)
        return loss if torch.is_grad_enabled() else loss + 100
    monkeypatch.setattr(fusion.engine.F, "cross_entropy", garbage_in_validation)
    run = train(config_of(flags(tiny, tmp_path, "--fuse", "none", "--run-name", "bad",
                                "--epochs", "1")))
    assert "(best)" not in capsys.readouterr().out
    assert not (run / "best.pt").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] is None and metrics["checkpoint"] == str(run / "last.pt")


def test_aggregation_modes_on_fabricated_clip_scores():
    # one video, three clips, three classes
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.2, 0.0]]])
    mean = aggregate(logits, "mean-softmax")
    torch.testing.assert_close(mean, logits.softmax(-1).mean(1))
    assert mean.argmax().item() == 0  # one confident clip outweighs two unsure ones
    assert aggregate(logits, "sum-logits").tolist() == [[4.0, pytest.approx(2.2), 0.0]]
    assert aggregate(logits, "vote").argmax().item() == 1  # two of three clips say class 1
    tie = torch.tensor([[[3.0, 0.0], [0.0, 1.0]]])  # one vote each: the mean softmax decides
    assert aggregate(tie, "vote").argmax().item() == 0


def test_summarize_prints_one_row_per_run(tmp_path, capsys, load_script):
    def fabricate(name, fuse, at, accs, params, seconds):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({
            "run": name, "parameters": params, "train_time_s": seconds,
            "config": {"fuse": fuse, "at": at, "at_flow": "", "stream": "flow"},
            "test": {k: {"accuracy": v} for k, v in accs.items()}}))
    fabricate("b_avg", "average", "scores", {"fused": 0.9, "rgb": 0.7, "flow": 0.8}, 2000, 90)
    fabricate("a_flow", "none", "layer4", {"fused": 0.61, "flow": 0.61}, 1000, 30)
    (tmp_path / "not_a_run").mkdir()
    assert load_script("summarize").main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("|")[1:-1] == [" run    ", " fusion      ", " tap    ", " RGB % ",
                                         " flow % ", " fused % ", " parameters ",
                                         " train time "]
    assert [c.strip() for c in lines[2].split("|")[1:-1]] == [
        "a_flow", "none (flow)", "-", "-", "61.0", "61.0", "1,000", "0.5 min"]
    assert [c.strip() for c in lines[3].split("|")[1:-1]] == [
        "b_avg", "average", "scores", "70.0", "80.0", "90.0", "2,000", "1.5 min"]
    assert load_script("summarize").main([str(tmp_path / "not_a_run")]) == 1


def card_env(**extra) -> dict:
    """The environment of a new user's shell: no PYTHON, no activated virtualenv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    return {**env, **extra}


def test_ablation_script_gets_through_every_fusion_on_the_gpu_memory_format(tiny, tmp_path):
    """The design card's ablation, run as a new user runs it (no PYTHON, no virtualenv
    activated: the script finds the project's), over every fusion with --channels-last on (the
    GPU path, taken on the CPU when asked for: conv3d's 5-D weights made the whole-model
    conversion fail on every GPU run). TensorBoard's own reader sees the runs' logs."""
    env = card_env(SWEEP=str(tmp_path / "sweep"))
    venv = Path(os.environ.get("FUSION_VENV", ROOT / ".venv"))
    venv = venv if venv.is_absolute() else ROOT / venv
    extra = flags(tiny, tmp_path / "unused", "--epochs", "1", "--eval-clips", "1",
                  "--segments", "2", "--channels-last", "on")
    extra = [a for i, a in enumerate(extra) if a != "--logdir" and extra[i - 1] != "--logdir"]
    result = subprocess.run(["bash", str(ROOT / "scripts" / "ablate_fusion_type.sh"),
                             "configs/synthetic_demo.toml", "1", "layer4", *extra],
                            env=env, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == f"[sweep] python: {venv / 'bin' / 'python'}"
    assert result.stdout.count("[sweep] python:") == 1
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    rows = {line.split("|")[1].strip(): line for line in table[1:]}
    assert sorted(rows) == sorted(["average", "sum", "max", "concat", "conv1x1", "conv3d",
                                   "bilinear"])
    assert "scores" in rows["average"] and "layer4" in rows["conv3d"]
    events = EventAccumulator(str(tmp_path / "sweep" / "conv3d")).Reload()
    assert {"loss/train/fused", "accuracy/val/fused", "lr"} <= set(events.Tags()["scalars"])
    assert {"samples/rgb", "samples/rgb_and_flow", "test/confusion_fused"} <= \
        set(events.Tags()["images"])
    # Run again: finished runs are skipped, the table is the same.
    again = subprocess.run(["bash", str(ROOT / "scripts" / "ablate_fusion_type.sh"),
                            "configs/synthetic_demo.toml", "1", "layer4", *extra],
                           env={**env, "FUSIONS": "average conv1x1"}, capture_output=True,
                           text=True, cwd=ROOT)
    assert again.returncode == 0 and again.stdout.count("is finished, skipping") == 2


def test_cpu_threads_split_the_usable_cpus_between_main_process_and_loader_workers(
        monkeypatch):
    from fusion.device import cpu_threads
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # e.g. a 2-CPU cpuset
    with cpu_threads(2) as note:  # the main process would otherwise take a thread per core
        assert torch.get_num_threads() == 1
    assert note == "CPU threads: 1 in the main process (2 usable CPUs - 2 loader workers), 1 in " \
                   "each of the 2 loader workers"
    assert torch.get_num_threads() == before  # restored after the run
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes on this node
    with cpu_threads(4) as note:
        assert torch.get_num_threads() == 4 and "16 usable CPUs / 2 processes" in note
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stays
    torch.set_num_threads(3)
    with cpu_threads(4) as note:
        assert torch.get_num_threads() == 3 and "(OMP_NUM_THREADS=3)" in note
    torch.set_num_threads(before)


def test_channels_last_is_applied_per_module_and_changes_no_result():
    from fusion.device import to_channels_last
    from fusion.parts import build_two_stream
    torch.manual_seed(0)
    model = build_two_stream(rgb="resnet18", flow="resnet18", fuse="conv3d", at="layer3",
                             num_classes=3, flow_stack=1).eval()
    rgb = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    flow = torch.randint(0, 256, (2, 3, 2, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        before = model(rgb, flow)
    cpu = torch.device("cpu")
    assert to_channels_last(model, "auto", cpu).fusion.conv.weight.is_contiguous()  # not on CPU
    to_channels_last(model, "on", cpu)
    assert model.fusion.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not model.fusion.conv.weight.is_contiguous()
    assert model.rgb.stages["conv1"][0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(model(rgb, flow), before, rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match="rank 4"):  # what whole-model conversion does
        model.to(memory_format=torch.channels_last)


def test_staged_unfreezing_keeps_frozen_stages_still_and_unfreezes_on_schedule(tiny, tmp_path):
    stages = ["--fuse", "none", "--stream", "rgb", "--freeze-until", "layer3",
              "--unfreeze", "2:layer1", "--schedule", "constant", "--run-name", "staged"]
    train(config_of(flags(tiny, tmp_path, *stages, "--epochs", "1")))
    first = load_checkpoint(tmp_path / "staged" / "last.pt")["model"]
    torch.manual_seed(0)  # the initial weights, built the way fit() builds them
    initial = fusion.build.build_model(config_of(flags(tiny, tmp_path, *stages)), 4).state_dict()
    train(config_of(["--resume", str(tmp_path / "staged"), "--epochs", "2"]),
          overrides={"resume": str(tmp_path / "staged"), "epochs": 2})
    second = load_checkpoint(tmp_path / "staged" / "last.pt")["model"]

    def same(a, b, stage):
        return all(torch.equal(a[k], b[k]) for k in a if k.startswith(f"stream.stages.{stage}."))
    # epoch 1: conv1 .. layer3 frozen (weights and BatchNorm statistics), layer4 and head train
    for stage in ("conv1", "layer1", "layer2", "layer3"):
        assert same(initial, first, stage), stage
    assert not same(initial, first, "layer4") and not same(initial, first, "scores")
    # epoch 2: frozen only up to layer1
    for stage in ("conv1", "layer1"):
        assert same(first, second, stage), stage
    for stage in ("layer2", "layer3", "layer4"):
        assert not same(first, second, stage), stage


def test_staged_unfreezing_config_errors():
    with pytest.raises(ValueError, match="unfreeze: 'layer2' is not 'EPOCH:TAP'"):
        config_of(["--unfreeze", "layer2"])
    with pytest.raises(ValueError, match="epochs must increase"):
        config_of(["--unfreeze", "5:layer2", "3:none"])
    with pytest.raises(ValueError, match="does not combine with freeze or partial_bn"):
        config_of(["--freeze-until", "layer2", "--partial-bn"])
    config = config_of(["--freeze-until", "layer4", "--unfreeze", "3:layer2", "5:none"])
    assert [config.frozen_until(e) for e in range(6)] == ["layer4", "layer4", "layer2", "layer2",
                                                          None, None]
    from fusion.model import SingleStream
    from fusion.policy import freeze_until
    from fusion.streams import build_stream
    model = SingleStream(build_stream("resnet18", num_classes=3))
    with pytest.raises(ValueError, match="freeze_until 'mixed7a' is not a tap of resnet18"):
        freeze_until(model, "mixed7a")
    freeze_until(model, "layer2")
    model.train()
    assert not model.stream.stages["layer2"][0].bn1.training
    assert model.stream.stages["layer3"][0].bn1.training
    assert not any(p.requires_grad for p in model.stream.stages["conv1"].parameters())
    freeze_until(model, None)
    model.train()
    assert all(p.requires_grad for p in model.parameters())
    assert model.stream.stages["layer2"][0].bn1.training


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                    reason="torch.compile's CPU backend needs a C++ compiler on this machine")
def test_compiled_training_matches_eager(tiny, tmp_path, monkeypatch):
    """--compile trains through torch.compile (inductor) with the asked mode: the first step's
    loss equals eager's, the second (after one compiled backward and update) stays close, and
    the checkpoint holds the plain model's keys, loadable without compiling."""
    real_compile, real_ce = torch.compile, fusion.engine.F.cross_entropy
    modes, losses = [], {"eager": [], "compiled": []}
    run = {"name": "eager"}

    def compile_spy(model, **kwargs):
        modes.append(kwargs.get("mode"))
        return real_compile(model, **kwargs)

    def ce_spy(logits, labels, *args, **kwargs):
        loss = real_ce(logits, labels, *args, **kwargs)
        if torch.is_grad_enabled():
            losses[run["name"]].append(loss.mean().item())
        return loss
    monkeypatch.setattr(torch, "compile", compile_spy)
    monkeypatch.setattr(fusion.engine.F, "cross_entropy", ce_spy)
    common = ["--fuse", "conv1x1", "--at", "layer4", "--epochs", "1", "--optimizer", "sgd",
              "--lr", "0.01", "--dropout", "0"]
    train(config_of(flags(tiny, tmp_path, *common, "--run-name", "eager")))
    run["name"] = "compiled"
    train(config_of(flags(tiny, tmp_path, *common, "--compile", "--compile-mode", "default",
                          "--run-name", "compiled")))
    assert modes == ["default"]
    eager, compiled = losses["eager"], losses["compiled"]
    assert len(eager) == len(compiled) == 2  # 8 training videos in batches of 4
    assert compiled[0] == pytest.approx(eager[0], rel=1e-4)
    # BatchNorm over 4 clips amplifies float rounding step by step, so only the second step
    # is compared closely
    assert compiled[1] == pytest.approx(eager[1], rel=2e-2)
    plain, kept = final_weights(tmp_path / "eager"), final_weights(tmp_path / "compiled")
    assert plain.keys() == kept.keys()
    with pytest.raises(ValueError, match="compile_mode"):
        config_of(flags(tiny, tmp_path, "--compile-mode", "fastest"))


def test_a_last_training_batch_of_one_is_dropped_and_evaluation_keeps_every_video(
        tmp_path, load_script):
    """9 training videos in batches of 4 would leave a last batch of one, which BatchNorm
    cannot train on when the fused map is 1 x 1 (32 px input, layer4): the incomplete batch is
    dropped (as the reference TSN code does); the 3 validation/test videos are all evaluated."""
    root = fake_ucf101(tmp_path / "ucf", {c: [1, 2, 3] for c in "ABC"},
                       {"A": [4], "B": [4], "C": [4]})
    code = load_script("train_fusion").main([
        "--dataset", "ucf101", "--data-root", str(root), "--logdir", str(tmp_path),
        "--run-name", "odd", "--image-size", "32", "--flow-stack", "2", "--epochs", "1",
        "--workers", "0", "--batch-size", "4", "--fuse", "conv1x1", "--at", "layer4",
        "--val-fraction", "0", "--eval-clips", "1"])
    assert code == 0
    epoch = load_checkpoint(tmp_path / "odd" / "last.pt")["history"][0]
    assert epoch["train"]["clips"] == 8 and epoch["val"]["clips"] == 3
    assert json.loads((tmp_path / "odd" / "metrics.json").read_text())["protocol"]["videos"] == 3
    with pytest.raises(ValueError, match="batch_size: 16 is more than the 9 training videos"):
        train(config_of(["--dataset", "ucf101", "--data-root", str(root), "--logdir",
                         str(tmp_path), "--run-name", "big", "--batch-size", "16",
                         "--val-fraction", "0", "--workers", "0"]))


def test_is_better_needs_both_lower_loss_and_higher_accuracy_under_seed_001s_rule():
    from fusion.engine import is_better
    best = {"loss/fused": 1.0, "acc/fused": 0.5}
    both = {"loss/fused": 0.9, "acc/fused": 0.6}
    lower_only = {"loss/fused": 0.9, "acc/fused": 0.5}
    higher_only = {"loss/fused": 1.1, "acc/fused": 0.7}
    assert is_better(both, None, "both", 4)  # a first epoch better than guessing is the best
    assert is_better(both, best, "both", 4)
    assert not is_better(lower_only, best, "both", 4)
    assert not is_better(higher_only, best, "both", 4)
    assert is_better(lower_only, best, "loss", 4) and not is_better(higher_only, best, "loss", 4)
    assert is_better(higher_only, best, "accuracy", 4)
    assert not is_better(lower_only, best, "accuracy", 4)
    # no rule takes an epoch whose loss is no better than guessing every class alike (ln 4 =
    # 1.39), nor improves on garbage: the first such epoch is no best, a falling one neither
    garbage, less = {"loss/fused": 3e14, "acc/fused": 0.25}, {"loss/fused": 2e14, "acc/fused": 0.5}
    for rule in ("both", "loss", "accuracy"):
        assert not is_better(garbage, None, rule, 4) and not is_better(less, garbage, rule, 4)
        assert not is_better({"loss/fused": 1.4, "acc/fused": 0.3}, None, rule, 4)


def test_per_class_accuracy_and_confusion_against_hand_counted_values():
    from fusion.evaluate import classification_metrics
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    predictions = torch.tensor([0, 1, 0, 1, 1, 0])
    scores = torch.nn.functional.one_hot(predictions, 4).float()
    metrics = classification_metrics(scores, labels, ["a", "b", "c", "d"])
    assert metrics["confusion"] == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["per_class"] == {"a": pytest.approx(2 / 3), "b": 1.0, "c": 0.0, "d": None}


def test_training_refuses_a_config_that_disagrees_with_extraction_json(tiny, tmp_path):
    (tiny / "extraction.json").write_text(json.dumps({"flow_method": "dis", "flow_bound": 20.0,
                                                      "short_side": 256}))
    try:
        with pytest.raises(ValueError, match="config key flow_method: 'tvl1', but .*"
                                             "extraction.json says the data was extracted "
                                             "with flow_method = 'dis'"):
            train(config_of(flags(tiny, tmp_path, "--run-name", "mismatch")))
        config = config_of(flags(tiny, tmp_path, "--flow-method", "dis", "--epochs", "0",
                                 "--fuse", "none", "--run-name", "agrees"))
        assert (train(config) / "metrics.json").is_file()
    finally:
        (tiny / "extraction.json").unlink()
