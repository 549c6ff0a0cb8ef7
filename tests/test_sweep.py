"""scripts/sweep.py: grids and named runs, the local launcher (one or N at a time, a GPU each),
failures in the table, nothing run twice; and submitit's local executor with a run interrupted
mid-training that is requeued and resumes to the weights of an uninterrupted one."""
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from fusion.data.synthetic import make_synthetic
from fusion.sweep import (as_flags, expand, load_sweep_file, make_executor, parse_grid,
                          parse_named, submitit_parameters)

ROOT = Path(__file__).resolve().parents[1]

# A stand-in for train_fusion.py (no torch: fast): it writes the run folder's files, records
# what it was given, fails for seed 13 as train_fusion.py fails ("error: ..." on stderr) unless
# PASS_13 is set, and waits a minute in seed 7's first attempt, after its last.pt (for a
# preemption to interrupt).
FAKE_TRAIN = '''
import json, os, sys, time
from pathlib import Path


def main(argv):
    began = time.time()
    if argv[0] == "--resume":
        folder = Path(argv[1])
        options = json.loads((folder / "last.pt").read_text())
    else:
        options = dict(zip([a[2:] for a in argv[::2]], argv[1::2]))
        folder = Path(options["logdir"]) / options["run-name"]
    if options.get("seed") == "13" and not os.environ.get("PASS_13"):
        print("epoch 1: ...")
        print("error: the training loss became nan at step 3", file=sys.stderr)
        return 1
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "last.pt").write_text(json.dumps(options))
    time.sleep(60 if options.get("seed") == "7" and argv[0] != "--resume" else 0.5)
    config = {"fuse": options.get("fuse", "conv1x1"), "at": "layer4", "at_flow": "",
              "stream": "rgb", "seed": options.get("seed")}
    (folder / "metrics.json").write_text(json.dumps({
        "run": folder.name, "parameters": 1000, "train_time_s": 60, "config": config,
        "test": {"fused": {"accuracy": 0.5}}}))
    (folder / "seen.json").write_text(json.dumps({
        "argv": argv, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "began": began,
        "ended": time.time()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''


def in_the_jobs(monkeypatch, **extra):
    """The environment submitit's local jobs inherit: this worktree's fusion, one thread."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for key, value in extra.items():
        monkeypatch.setenv(key, value)


def launch(sweep, argv):
    """sweep.main(argv) in a thread (it waits for its jobs); returns (thread, result)."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(code=sweep.main(argv)))
    thread.start()
    return thread, result


def preempt(run: Path, deadline_s: float = 300) -> None:
    """Once `run` has a last.pt, send its job the signal Slurm sends before preempting it or
    at its time limit (submitit's USR2); the job's pid is in the run's sweep.log."""
    deadline = time.monotonic() + deadline_s
    while not (run / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    pid = int(re.findall(r"pid (\d+)", (run / "sweep.log").read_text())[-1])
    os.kill(pid, signal.SIGUSR2)


def table(printed: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in printed.splitlines()
            if line.startswith("| ")]
    return {row[0]: dict(zip(rows[0], row)) for row in rows[1:]}


def test_grid_flags_and_file_make_named_runs_with_train_fusion_options(tmp_path):
    assert parse_grid(["fuse=sum,max", "--flow-stack=5,10"]) == {
        "fuse": ["sum", "max"], "flow_stack": ["5", "10"]}
    assert parse_named([["step", "schedule=step", "step-size=5"]]) == {
        "step": {"schedule": "step", "step_size": "5"}}
    with pytest.raises(ValueError, match="unknown option 'flow_stak'; did you mean 'flow_stack'"):
        parse_grid(["flow_stak=1,2"])
    with pytest.raises(ValueError, match="run_name is set by the sweep"):
        parse_grid(["run_name=a,b"])
    with pytest.raises(ValueError, match="run name 'lr=1': a run starts with its name"):
        parse_named([["lr=1", "seed=2"]])
    assert as_flags("oversample", "false") == ["--no-oversample"]
    assert as_flags("fusion_weights", [1, 1.5]) == ["--fusion-weights", "1", "1.5"]
    assert as_flags("fusion_weights", "1 1.5") == ["--fusion-weights", "1", "1.5"]
    (tmp_path / "s.toml").write_text('[grid]\nsplit = [1, 2]\nkeep_spatial_head = [true]\n'
                                     '[runs.step]\nschedule = "step"\n[runs.cyclic]\n'
                                     'schedule = "cyclic"\nmax_lr = 1e-4\n')
    grid, named = load_sweep_file(tmp_path / "s.toml")
    runs = expand(grid=grid, named=named, common=["--epochs", "5"], out=tmp_path / "out",
                  script="train.py")
    assert [r.name for r in runs] == [
        "step_split-1_keep_spatial_head-True", "step_split-2_keep_spatial_head-True",
        "cyclic_split-1_keep_spatial_head-True", "cyclic_split-2_keep_spatial_head-True"]
    assert runs[3].argv == ["--epochs", "5", "--schedule", "cyclic", "--max-lr", "0.0001",
                            "--split", "2", "--keep-spatial-head", "--logdir",
                            str(tmp_path / "out"), "--run-name", runs[3].name]
    assert runs[3].folder == tmp_path / "out" / runs[3].name


def test_local_sweep_n_at_a_time_a_gpu_each_reports_failures_and_runs_nothing_twice(
        tmp_path, load_script, capsys, monkeypatch):
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    out = tmp_path / "sweep"
    interrupted = out / "fuse-sum_seed-1"  # an earlier attempt left its last.pt
    interrupted.mkdir(parents=True)
    (interrupted / "last.pt").write_text(json.dumps({"logdir": str(out), "seed": "1",
                                                     "fuse": "sum"}))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    argv = ["--out", str(out), "--script", str(fake), "--grid", "fuse=sum,max",
            "--grid", "seed=1,13,2", "--parallel", "2", "--epochs", "3", "--image-size", "32"]
    monkeypatch.delenv("PASS_13", raising=False)
    sweep = load_script("sweep")
    assert sweep.main(argv) == 1  # two runs failed; the four others finished
    printed = capsys.readouterr().out
    rows = table(printed)
    assert sorted(rows) == sorted(f"fuse-{f}_seed-{s}" for f in ("sum", "max")
                                  for s in (1, 13, 2))
    for name, row in rows.items():
        failed = "seed-13" in name
        assert row["error"] == ("the training loss became nan at step 3" if failed else "")
        assert row["fused %"] == ("-" if failed else "50.0")
    assert "[sweep] 6 runs: 3 trained, 1 resumed, 0 finished before, 2 failed" in printed
    assert (out / "summary.png").is_file()
    # each run: the common options, its own values, its folder; an interrupted one resumes
    seen = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/seen.json")}
    assert seen["fuse-max_seed-2"]["argv"] == [
        "--epochs", "3", "--image-size", "32", "--fuse", "max", "--seed", "2",
        "--logdir", str(out), "--run-name", "fuse-max_seed-2"]
    assert seen["fuse-sum_seed-1"]["argv"] == ["--resume", str(interrupted)]
    assert "resuming from last.pt" in (interrupted / "sweep.log").read_text()
    # two at a time, and never two on one GPU
    spans = sorted((s["began"], s["ended"], s["gpu"]) for s in seen.values())
    assert {gpu for *_, gpu in spans} == {"5", "7"}
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if b[0] < a[1]]
    assert overlapping and all(a[2] != b[2] for a, b in overlapping)
    # Again: the finished runs are not run again (the failed ones are).
    stamps = {name: (out / name / "metrics.json").stat().st_mtime_ns for name in seen}
    assert sweep.main(argv) == 1
    printed = capsys.readouterr().out
    assert printed.count("is finished, skipping") == 4
    assert stamps == {name: (out / name / "metrics.json").stat().st_mtime_ns for name in seen}
    assert len(table(printed)) == 6
    # A bad value fails its run before anything starts; a typo stops the sweep.
    assert sweep.main(["--out", str(tmp_path / "bad"), "--script", str(fake),
                       "--grid", "lr=0.1,-1"]) == 1
    rows = table(capsys.readouterr().out)
    assert rows["lr--1"]["error"] == "config key lr: must be > 0, got -1.0"
    with pytest.raises(SystemExit):
        sweep.main(["--out", str(tmp_path / "typo"), "--script", str(fake), "--grid", "lr=1",
                    "--epohcs", "3"])
    assert "unknown option --epohcs; did you mean --epochs?" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def test_submitit_sweep_requeues_a_preempted_run_reports_a_failure_and_reruns_nothing(
        tmp_path, load_script, capsys, monkeypatch):
    """Four runs on submitit's local executor (the Slurm code path: pickled Run objects, the
    preemption signal, checkpoint() and requeue): seed 7 is preempted and requeued and resumes,
    seed 13 fails and the others go on; relaunched, only the failed run runs (and now
    passes); relaunched again, nothing runs."""
    in_the_jobs(monkeypatch)
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    out = tmp_path / "sweep"
    argv = ["--out", str(out), "--launcher", "submitit-local", "--script", str(fake),
            "--grid", "seed=1,2,7,13", "--epochs", "2"]
    sweep = load_script("sweep")
    thread, result = launch(sweep, argv)
    preempt(out / "seed-7")
    thread.join(timeout=120)
    assert not thread.is_alive() and result["code"] == 1
    printed = capsys.readouterr().out
    rows = table(printed)
    assert sorted(rows) == ["seed-1", "seed-13", "seed-2", "seed-7"]
    assert rows["seed-13"]["error"] == "the training loss became nan at step 3"
    assert "[sweep] 4 runs: 2 trained, 1 resumed, 0 finished before, 1 failed" in printed
    log = (out / "seed-7" / "sweep.log").read_text()
    assert "seed-7: starting" in log and "seed-7: resuming from last.pt" in log
    assert json.loads((out / "seed-7" / "seen.json").read_text())["argv"] == [
        "--resume", str(out / "seed-7")]
    monkeypatch.setenv("PASS_13", "1")
    assert sweep.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("is finished, skipping") == 3 and "seed-13: job " in printed
    assert len(table(printed)) == 4
    jobs = sorted(p.name for p in (out / ".submitit").iterdir())
    assert sweep.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("is finished, skipping") == 4 and ": job " not in printed
    assert sorted(p.name for p in (out / ".submitit").iterdir()) == jobs


def test_a_run_preempted_mid_training_resumes_to_the_weights_of_an_uninterrupted_one(
        tmp_path, load_script, capsys, monkeypatch):
    """train_fusion.py under submitit's local executor: seed-0_eval_clips-1 is preempted once
    its first epoch is saved (an epoch here takes tens of milliseconds, so the signal lands in
    epoch 2, 3 or 4), requeued, and resumes from last.pt; its twin seed-0_eval_clips-2 trains
    alike (eval_clips acts only on the final test), uninterrupted: the same weights."""
    in_the_jobs(monkeypatch)
    data = make_synthetic(tmp_path / "data", groups=3, clips_per_group=2, height=40, width=48,
                          min_frames=6, max_frames=10, seed=4)
    out = tmp_path / "sweep"
    argv = ["--out", str(out), "--launcher", "submitit-local", "--grid", "eval_clips=1,2",
            "--data-root", str(data), "--image-size", "32", "--epochs", "4", "--workers", "0",
            "--batch-size", "4", "--fuse", "none", "--stream", "rgb", "--rgb",
            "timm:test_resnet", "--val-fraction", "0.25"]
    thread, result = launch(load_script("sweep"), argv)
    victim, twin = out / "eval_clips-1", out / "eval_clips-2"
    preempt(victim)
    thread.join(timeout=300)
    assert not thread.is_alive() and result["code"] == 0
    printed = capsys.readouterr().out
    assert "[sweep] 2 runs: 1 trained, 1 resumed, 0 finished before, 0 failed" in printed
    log = (victim / "sweep.log").read_text()
    after = re.findall(rf"resuming {re.escape(str(victim))} after epoch (\d)", log)
    assert after and int(after[0]) in (1, 2, 3), log  # train_fusion.py's words: mid-training
    resumed, alone = (torch.load(folder / "last.pt") for folder in (victim, twin))
    assert resumed["epoch"] == alone["epoch"] == 4
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    for key, value in resumed["model"].items():
        torch.testing.assert_close(value, alone["model"][key], rtol=0, atol=1e-6, msg=key)


def test_slurm_launcher_options_become_the_job_array_s_sbatch_lines(tmp_path, load_script,
                                                                    monkeypatch):
    """No Slurm here: submitit's Slurm executor, built as sweep.py builds it (a stub srun on
    the PATH lets it start), writes the batch file the jobs would get."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "srun").write_text("#!/bin/sh\nexit 0\n")
    (stubs / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stubs}{os.pathsep}{os.environ['PATH']}")
    sweep = load_script("sweep")
    args, common = sweep.parse([
        "--out", "runs/s", "--launcher", "slurm", "--partition", "gpu", "--time", "90",
        "--account", "proj", "--mem-gb", "32", "--slurm", "exclude=node12",
        "--setup", "module load cuda", "--parallel", "3", "--epochs", "5"])
    assert common == ["--epochs", "5"]
    executor = make_executor(tmp_path / "jobs", cluster="slurm", max_requeues=7,
                             parameters=submitit_parameters(args, "sweep-s"))
    assert executor._executor.max_num_timeout == 7
    assert executor._executor.parameters["array_parallelism"] == 3
    text = executor._executor._make_submission_file_text("python -m job", "uid")
    for line in ("--partition=gpu", "--time=90", "--account=proj", "--mem=32GB",
                 "--exclude=node12", "--gpus-per-node=1", "--cpus-per-task=8", "--nodes=1",
                 "--job-name=sweep-s", "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in text, line
    assert "\nmodule load cuda\n" in text


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_requeue_exit_swallowed_by_a_del_is_raised_again():
    """submitit's SIGUSR2 handler ends the job with SystemExit; landing inside a __del__ (as
    the garbage collector runs tqdm's), that exit is swallowed and the job would train on.
    Inside requeue_exit_not_swallowed the same exit comes again until it takes."""
    from fusion.sweep import requeue_exit_not_swallowed

    def submitit_handler(signum, frame):
        raise SystemExit(144)

    class Bar:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGUSR2)
            sum(range(10000))  # the handler runs here, inside __del__

    def spin(seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pass

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        Bar()  # without the wrapper: the exit is swallowed, the loop runs to its end
        spin(0.2)
        with pytest.raises(SystemExit) as exited:
            with requeue_exit_not_swallowed():
                Bar()
                spin(5)
        assert exited.value.code == 144
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # restored
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.signal(signal.SIGUSR2, previous)
