"""Beyond one machine: torchrun over two localhost "nodes" (gloo), one of them killed and the run
resumed through scripts/slurm/train.sbatch; extraction as a Slurm job array. Slurm itself is
stood in for by a stub srun / scontrol and the SLURM_* variables Slurm sets."""
import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fusion.data.synthetic import make_synthetic

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("ddp_worker.py")
TIMEOUT = 10  # --dist-timeout of the killed run, seconds


def environment(**extra) -> dict:
    """This worktree's fusion in every subprocess (torchrun's workers included), one thread
    each (several processes share few cores)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flags(data, logdir) -> list[str]:
    # BatchNorm fixed and no dropout, as tests/test_distributed.py: then the same two ranks
    # train alike however they are spread over nodes. A tiny timm ResNet keeps it fast.
    return ["--data-root", str(data), "--logdir", str(logdir), "--run-name", "run",
            "--image-size", "32", "--epochs", "2", "--workers", "0", "--batch-size", "2",
            "--fuse", "none", "--stream", "rgb", "--rgb", "timm:test_resnet", "--freeze", "bn",
            "--dropout", "0", "--optimizer", "sgd", "--lr", "0.05", "--val-fraction", "0.25",
            "--eval-clips", "1", "--dist-timeout", str(TIMEOUT)]


def torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def write_stub(folder: Path, name: str, text: str) -> None:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


# srun inside an allocation: its command once per node, each with that node's SLURM_* ids
SRUN = """#!/usr/bin/env bash
while [[ $1 == -* ]]; do shift; done  # --ntasks-per-node=1 --kill-on-bad-exit=1
pids=()
for ((i = 0; i < SLURM_JOB_NUM_NODES; i++)); do
  SLURM_NODEID=$i SLURM_PROCID=$i SLURM_LOCALID=0 "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""
SCONTROL = """#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] && tr ',' '\\n' <<< "$3"
"""


def test_two_nodes_one_killed_then_resumed_by_the_sbatch_end_as_one_node(tmp_path):
    """Two "nodes" of one process each (static --node-rank, --master-addr): rank 1 is SIGKILLed
    in epoch 2; node 0 stops non-zero within --dist-timeout naming rank 1, its run folder holds
    only whole files (epoch 1) and node 1 wrote nothing. train.sbatch (c10d rendezvous, two
    nodes under a stub srun) resumes it: the weights equal one node x two processes'."""
    data = make_synthetic(tmp_path / "data", groups=3, clips_per_group=2, height=40, width=48,
                          min_frames=6, max_frames=10, seed=4)
    one = tmp_path / "one"
    one.mkdir()
    reference = subprocess.Popen(  # 1 node x 2 processes, meanwhile
        torchrun("--standalone", "--nproc-per-node=2", str(WORKER), str(one),
                 *flags(data, one)), cwd=one, env=environment(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    port = free_port()
    nodes, homes = [], [tmp_path / "node0", tmp_path / "node1"]
    for rank, home in enumerate(homes):
        home.mkdir()
        # a relative --logdir: each node would write under its own folder
        nodes.append(subprocess.Popen(
            torchrun("--nnodes=2", f"--node-rank={rank}", "--nproc-per-node=1",
                     "--master-addr=127.0.0.1", f"--master-port={port}", str(WORKER),
                     str(home), *flags(data, "runs")),
            cwd=home, env=environment(KILL_RANK_AT="1:2:0"), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    ended = {}
    deadline = time.monotonic() + 300
    while len(ended) < 2 and time.monotonic() < deadline:  # a hang ends the test
        for rank, node in enumerate(nodes):
            if rank not in ended and node.poll() is not None:
                ended[rank] = time.monotonic()
        time.sleep(0.05)
    printed = [node.communicate(timeout=5)[0] for node in nodes]
    assert nodes[1].returncode != 0 and "Signal 9 (SIGKILL)" in printed[1]
    assert nodes[0].returncode != 0, printed[0][-3000:]
    assert "rank 0: lost rank 1 of 2: no answer" in printed[0], printed[0][-3000:]
    assert ended[0] - ended[1] < TIMEOUT + 20  # the census waits TIMEOUT; the rest is slack
    # Only global rank 0 wrote (node 1's local rank 0 did not), and only whole files.
    assert not (homes[1] / "runs").exists()
    run = homes[0] / "runs" / "run"
    names = sorted(p.name for p in run.iterdir())
    assert "metrics.json" not in names and not [n for n in names if n.endswith(".tmp")], names
    epoch1 = torch.load(run / "last.pt")
    assert epoch1["epoch"] == 1

    assert reference.wait(timeout=300) == 0, reference.communicate()[0][-3000:]
    reference.stdout.close()
    stubs = tmp_path / "bin"
    write_stub(stubs, "srun", SRUN)
    write_stub(stubs, "scontrol", SCONTROL)
    writers = {p.name for p in run.glob("events.out.tfevents.*")}
    slurm = environment(PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}", PYTHON=sys.executable,
                        SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="2",
                        SLURM_JOB_NODELIST="127.0.0.1,127.0.0.1", SLURM_SUBMIT_DIR=str(ROOT),
                        MASTER_PORT=str(free_port()))
    result = subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / "train.sbatch"),
                             "--resume", str(run)], cwd=tmp_path, env=slurm, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 node(s), rendezvous 127.0.0.1" in result.stdout
    assert f"resuming {run} after epoch 1" in result.stdout and "2 processes" in result.stdout
    assert (run / "metrics.json").is_file()
    new = {p.name for p in run.glob("events.out.tfevents.*")} - writers
    assert len({name.split(".")[-2] for name in new}) == 1  # one writing process (its pid)
    final = torch.load(run / "last.pt")["model"]
    alone = torch.load(one / "run" / "last.pt")["model"]
    assert any(not torch.equal(final[k], epoch1["model"][k]) for k in final)  # epoch 2 trained
    for key, value in final.items():
        torch.testing.assert_close(value, alone[key], rtol=1e-4, atol=1e-5, msg=key)


# Two processes of a process group (no torchrun: rank 0 holds the store), joined through
# fusion.distributed.session with a dist_timeout of argv[1] seconds. First rank 0 works alone
# for longer than the timeout, as in the final test, while rank 1 waits at the barrier; then
# both sum across ranks until rank 1 freezes (SIGSTOP: its connections stay open, as those of
# a node that vanished).
PAIR = """
import os, signal, sys, time
from fusion import distributed
timeout = float(sys.argv[1])
with distributed.session("cpu", timeout) as (context, device):
    if context.rank == 0:
        time.sleep(2.5 * timeout)
    distributed.barrier(context)
    print(f"rank {context.rank} passed the barrier", flush=True)
    for step in range(10000):
        if context.rank == 1 and step == 5:
            print(f"stopping at {time.time()}", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        distributed.sum_across([1.0], context, device)
        time.sleep(0.05)
"""


def test_a_long_wait_for_rank_0_is_no_loss_and_a_vanished_rank_is_named_after_the_timeout():
    """Waiting at the barrier while rank 0 works alone is not bounded by dist_timeout. A frozen
    rank closes no connection: only dist_timeout ends the others' wait, and rank 0 then names
    it within the timeout plus the census (as long again)."""
    timeout, port = 3.0, str(free_port())
    survivor, frozen = (subprocess.Popen(
        [sys.executable, "-c", PAIR, str(timeout)], text=True, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env=environment(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0",
                                                  MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
        for rank in (0, 1))
    try:
        printed = survivor.communicate(timeout=120)[0]
        ended = time.time()
    finally:
        frozen.kill()
    assert "rank 0 passed the barrier" in printed, printed[-2000:]
    assert survivor.returncode != 0
    assert "RankLost: rank 0: lost rank 1 of 2: no answer" in printed, printed[-2000:]
    assert "Timed out" in printed  # gloo's own error, after dist_timeout
    frozen_printed = frozen.communicate()[0]
    assert "rank 1 passed the barrier" in frozen_printed
    stopped = float(re.search(r"stopping at ([\d.]+)", frozen_printed).group(1))
    assert timeout - 0.5 < ended - stopped < 2 * timeout + 10


def write_videos(folder: Path, count: int = 3, frames: int = 6) -> Path:
    """Tiny UCF101-style videos: a smooth texture drifting right, each video its own."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in range(count):
        texture = cv2.resize(rng.uniform(0, 255, (12, 16, 3)), (80, 40),
                             interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
        writer = cv2.VideoWriter(str(folder / f"v_Drift_g0{n + 1}_c01.avi"),
                                 cv2.VideoWriter_fourcc(*"MJPG"), 25, (48, 40))
        for k in range(frames):
            writer.write(np.ascontiguousarray(texture[:, 2 * k:2 * k + 48]))
        writer.release()
    return folder.parent


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(root.rglob("*"))}


def array_task(task_id, first, count, argv, python, step=None):
    env = environment(PYTHON=python, SLURM_ARRAY_TASK_ID=str(task_id),
                      SLURM_ARRAY_TASK_MIN=str(first), SLURM_ARRAY_TASK_COUNT=str(count),
                      SLURM_CPUS_PER_TASK="1", SLURM_SUBMIT_DIR=str(ROOT))
    if step is not None:
        env["SLURM_ARRAY_TASK_STEP"] = str(step)
    return subprocess.Popen(["bash", str(ROOT / "scripts" / "slurm" / "extract.sbatch"), *argv],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.parametrize("first, step, count, ids", [
    (0, None, 3, [0, 1, 2]), (1, None, 3, [1, 2, 3]), (5, 2, 3, [5, 7, 9])])
def test_extract_array_tasks_are_shards_k_of_n_from_one_whichever_the_first_id(
        tmp_path, first, step, count, ids):
    echo = tmp_path / "bin"
    write_stub(echo, "python", '#!/usr/bin/env bash\necho "ARGS $*"\n')
    for k, task_id in enumerate(ids, start=1):
        task = array_task(task_id, first, count, ["--out", "o"], str(echo / "python"), step)
        printed = task.communicate(timeout=30)[0]
        assert task.returncode == 0, printed
        assert f"ARGS scripts/extract_frames.py --workers 1 --out o --shard {k}/{count}" in printed
    task = array_task(first + count * (step or 1), first, count, [], str(echo / "python"), step)
    printed = task.communicate(timeout=30)[0]
    assert task.returncode == 2 and f"is not task K of {count}" in printed


def test_two_array_tasks_extract_the_tree_of_one_unsharded_run(tmp_path, load_script):
    videos = write_videos(tmp_path / "videos" / "Drift")
    argv = ["--videos", str(videos), "--flow", "dis", "--short-side", "32"]
    tasks = [array_task(task_id, 0, 2, [*argv, "--out", str(tmp_path / "array")],
                        sys.executable) for task_id in (0, 1)]  # 0-based ids, at once
    for task in tasks:
        printed = task.communicate(timeout=120)[0]
        assert task.returncode == 0, printed
    assert load_script("extract_frames").main([*argv, "--out", str(tmp_path / "one")]) == 0
    sharded, whole = tree(tmp_path / "array"), tree(tmp_path / "one")
    assert len([k for k in whole if k.endswith(".jpg")]) == 3 * (6 + 5 + 5)  # RGB, u, v
    assert sharded.keys() == whole.keys()
    assert sharded == whole
