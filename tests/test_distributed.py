"""torchrun with 2 CPU processes (gloo) against a single process with the same global batch."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.fakes import fake_ucf101

from fusion.config import build_parser, resolve
from fusion.data.synthetic import make_synthetic
from fusion.build import build_model
from fusion.lock import locked

WORKER = Path(__file__).with_name("ddp_worker.py")


def flags(data, logdir, batch_size):
    # BatchNorm fixed and no dropout: then 2 x 2 clips must train exactly like 1 x 4 clips.
    return ["--data-root", str(data), "--logdir", str(logdir), "--run-name", "run",
            "--image-size", "32", "--flow-stack", "2", "--epochs", "2", "--workers", "0",
            "--batch-size", str(batch_size), "--fuse", "concat", "--at", "layer4",
            "--freeze", "bn", "--dropout", "0", "--optimizer", "sgd", "--lr", "0.05",
            "--val-fraction", "0.25", "--eval-clips", "1"]


def run(argv, cwd, timeout=600):
    result = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_two_gloo_processes_match_each_other_and_one_process(tmp_path):
    data = make_synthetic(tmp_path / "data", groups=3, clips_per_group=2, height=40, width=48,
                          min_frames=6, max_frames=10, seed=4)
    (tmp_path / "ddp").mkdir()
    (tmp_path / "one").mkdir()
    # the processes decode their batches themselves (decode = device, here on the CPU): the
    # same training as the one process decoding in its loader
    printed = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node=2", str(WORKER), str(tmp_path / "ddp"),
                   *flags(data, tmp_path / "ddp", 2), "--decode", "device"], cwd=tmp_path)
    assert "2 processes" in printed and "decode = device" in printed
    run([sys.executable, str(WORKER), str(tmp_path / "one"), *flags(data, tmp_path / "one", 4)],
        cwd=tmp_path)
    rank0 = torch.load(tmp_path / "ddp" / "rank0.pt")
    rank1 = torch.load(tmp_path / "ddp" / "rank1.pt")
    alone = torch.load(tmp_path / "one" / "rank0.pt")
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), f"ranks disagree on {key}"
        torch.testing.assert_close(value, alone[key], rtol=1e-4, atol=1e-5, msg=key)
    # Training did move the weights (else agreeing would mean little): rebuild the initial model
    # the way fit() does and compare.
    torch.manual_seed(0)
    initial = build_model(resolve(build_parser().parse_args(flags(data, tmp_path, 4))), 4)
    assert not torch.equal(initial.state_dict()["head.3.weight"], rank0["head.3.weight"])
    # Only rank 0 wrote the run; its metrics are over the whole validation set.
    run_dir = tmp_path / "ddp" / "run"
    assert (run_dir / "last.pt").is_file() and (run_dir / "metrics.json").is_file()
    assert not (run_dir / ".lock").exists()  # rank 0 alone held it (rank 1 would have failed)
    ddp_history = torch.load(run_dir / "last.pt")["history"]
    one_history = torch.load(tmp_path / "one" / "run" / "last.pt")["history"]
    assert [h["val"]["clips"] for h in ddp_history] == [h["val"]["clips"] for h in one_history]
    assert ddp_history[-1]["val"]["acc/fused"] == pytest.approx(
        one_history[-1]["val"]["acc/fused"])


def test_a_nan_on_one_rank_stops_every_rank(tmp_path):
    """Rank 1's validation loss turns NaN: rank 0 learns it at the same read and stops with its
    own error instead of waiting forever in the end-of-pass all-reduce."""
    data = make_synthetic(tmp_path / "data", groups=3, clips_per_group=2, height=40, width=48,
                          min_frames=6, max_frames=10, seed=4)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(WORKER), str(tmp_path), *flags(data, tmp_path, 2)], capture_output=True, text=True,
        cwd=tmp_path, timeout=300, env={**os.environ, "NAN_IN_VALIDATION_ON_RANK": "1"})
    assert result.returncode != 0
    assert "validate loss became nan at step 0" in result.stderr  # rank 1, its own
    assert "validate loss diverged on another process" in result.stderr  # rank 0


def test_a_run_folder_in_use_stops_every_rank_at_once(tmp_path):
    """Rank 0 alone claims the run folder; when it is held, every rank stops with rank 0's
    error instead of training or waiting for rank 0."""
    with locked(tmp_path / "run"):
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             str(WORKER), str(tmp_path), *flags(tmp_path / "no-data", tmp_path, 2)],
            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert f"{tmp_path / 'run'} is in use by pid {os.getpid()}" in result.stderr
    assert f"rank 0: {tmp_path / 'run'} is in use by pid" in result.stderr  # rank 1 stops too


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_seeded_sampler_pads_shards_to_one_length_and_marks_the_duplicates(world):
    from fusion.data.loader import SeededSampler
    for size in range(1, 12):
        for shuffle in (False, True):
            shards = []
            for rank in range(world):
                sampler = SeededSampler(size, shuffle=shuffle, seed=3, rank=rank, world=world)
                sampler.set_epoch(1)
                shards.append(list(sampler))
                assert len(shards[-1]) == len(sampler) == -(-size // world)
            counted = sorted(i for shard in shards for _, i, c in shard if c)
            assert counted == list(range(size)), (size, world)  # each video counted once
            padding = [i for shard in shards for _, i, c in shard if not c]
            assert len(padding) == len(sampler) * world - size


def test_three_processes_with_unequal_shards_and_a_skipped_video_finish_and_count_once(
        tmp_path):
    """7 training videos over 3 gloo processes in batches of 2, one of them unreadable and
    skipped: every rank takes the same steps (no wait forever in the all-reduce), and the 5
    validation / test videos are each counted once, not with their padding duplicates."""
    root = fake_ucf101(tmp_path / "ucf", {"A": [1, 2, 3], "B": [1, 2], "C": [1, 2]},
                       {"A": [4], "B": [3, 4], "C": [3, 4]}, bad=["v_B_g01_c01"])
    argv = ["--dataset", "ucf101", "--data-root", str(root), "--logdir", str(tmp_path),
            "--run-name", "run", "--image-size", "32", "--flow-stack", "2", "--epochs", "2",
            "--workers", "0", "--batch-size", "2", "--fuse", "concat", "--at", "layer4",
            "--val-fraction", "0", "--eval-clips", "1", "--on-bad", "skip", "--lr", "0.01"]
    printed = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node=3", str(WORKER), str(tmp_path), *argv], cwd=tmp_path,
                  timeout=180)  # a hang ends the test
    assert "3 processes" in printed
    history = torch.load(tmp_path / "run" / "last.pt")["history"]
    assert len(history) == 2
    for epoch in history:
        assert epoch["val"]["clips"] == 5  # 2 per rank with one padding duplicate: counted once
        # 9 padded places, 3 a rank, one batch of 2 each: 6 trained; the stand-in for the
        # unreadable video trains but is not counted
        assert epoch["train"]["clips"] + epoch["train"]["skipped"] == 6
    assert sum(epoch["train"]["skipped"] for epoch in history) >= 1  # the skip was exercised
    import json
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["protocol"]["videos"] == 5


def test_seeded_sampler_order_and_seeds_depend_on_seed_and_epoch_alone():
    from fusion.data.loader import SeededSampler

    def keys(seed, epoch, rank=0, world=1):
        sampler = SeededSampler(10, shuffle=True, seed=seed, rank=rank, world=world)
        sampler.set_epoch(epoch)
        return list(sampler)
    assert keys(1, 3) == keys(1, 3)  # a resumed run replays its epoch
    assert keys(1, 3) != keys(1, 4) and keys(1, 3) != keys(2, 3)
    # a video's augmentation seed is the same whichever rank loads it
    alone = {i: seed for seed, i, _ in keys(1, 3)}
    for rank in range(3):
        for seed, i, _ in keys(1, 3, rank, 3):
            assert alone[i] == seed
    in_order = SeededSampler(5, shuffle=False, rank=1, world=2)
    assert [(i, counted) for _, i, counted in in_order] == [(1, True), (3, True), (0, False)]
