"""Sweeps: many runs of a training script, each in its own folder under one sweep folder, run on
this machine (one at a time, or N at a time with a GPU each) or as Slurm jobs through submitit.

    runs = expand(grid={"fuse": ["sum", "max"], "seed": [0, 1]}, named={}, common=[...],
                  out=Path("runs/s"), script="scripts/train_fusion.py")  # fuse-sum_seed-0, ...
    outcomes = run_local(runs)              # or run_submitit(runs, make_executor(...))

A run's state is its folder: metrics.json means finished (never run again), last.pt means
interrupted (resumed with --resume), nothing means new. `Run` is also a submitit
checkpointable: preempted or timed out, it is requeued as itself and resumes from last.pt.
Each attempt is noted in <run>/sweep.log with the run's output.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import importlib.util
import io
import itertools
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import traceback
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LOG = "sweep.log"  # in each run folder: the attempts and their output
SET_BY_SWEEP = ("logdir", "run_name", "resume")  # options a sweep gives each run itself
LAUNCHERS = ("local", "inline", "slurm", "submitit-local")


def config_key(text: str) -> str:
    """A Config key from 'flow_stack', 'flow-stack' or '--flow-stack'; an error names the
    unknown one and the closest known."""
    from fusion.config import Config  # here: a job running `Run` needs no torch until it trains
    key = text.strip().lstrip("-").replace("-", "_")
    known = [f.name for f in dataclasses.fields(Config)]
    if key not in known:
        import difflib
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown option {text!r}{hint}")
    if key in SET_BY_SWEEP:
        raise ValueError(f"{key} is set by the sweep for each run (its folder is OUT/<name>)")
    return key


def parse_grid(items: list[str]) -> dict[str, list]:
    """['fuse=sum,max', 'seed=0,1'] -> {'fuse': ['sum', 'max'], 'seed': ['0', '1']}."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"--grid {item!r}: expected KEY=V1,V2,...")
        grid[config_key(key)] = values.split(",")
    return grid


def run_name(name: str) -> str:
    """A named run's name, which names its folder."""
    if not name or "=" in name or os.sep in name or name.startswith("."):
        raise ValueError(f"run name {name!r}: a run starts with its name (a folder name), then "
                         f"KEY=VALUE pairs")
    return name


def parse_named(items: list[list[str]]) -> dict[str, dict]:
    """[['step', 'schedule=step', 'step_size=5'], ...] -> {'step': {'schedule': 'step', ...}}."""
    named = {}
    for name, *pairs in items:
        run_name(name)
        options = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"--run {name}: {pair!r} is not KEY=VALUE")
            options[config_key(key)] = value
        if name in named:
            raise ValueError(f"run {name!r} is given twice")
        named[name] = options
    return named


def load_sweep_file(path: Path) -> tuple[dict[str, list], dict[str, dict]]:
    """A TOML file's [grid] (key = [values]) and [runs.NAME] tables (key = value)."""
    import tomllib
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"sweep file {path}: {err}") from None
    unknown = set(data) - {"grid", "runs"}
    if unknown:
        raise ValueError(f"sweep file {path}: unknown tables {sorted(unknown)}; it holds [grid] "
                         f"and [runs.NAME]")
    grid = {}
    for key, values in data.get("grid", {}).items():
        grid[config_key(key)] = values if isinstance(values, list) else [values]
    named = {run_name(name): {config_key(k): v for k, v in options.items()}
             for name, options in data.get("runs", {}).items()}
    return grid, named


def as_flags(key: str, value) -> list[str]:
    """A Config key and value as train_fusion.py's options: --flow-stack 5, --oversample /
    --no-oversample, --fusion-weights 1 1.5 (a list, or a string of space-separated items)."""
    flag = "--" + key.replace("_", "-")
    kind = config_types()[key]
    if kind is bool:
        if isinstance(value, str) and value.lower() not in ("true", "false", "on", "off"):
            raise ValueError(f"{key}: {value!r} is not true or false")
        on = value if isinstance(value, bool) else value.lower() in ("true", "on")
        return [flag if on else "--no-" + flag[2:]]
    if typing.get_origin(kind) is list:
        items = value.split() if isinstance(value, str) else value
        return [flag, *map(str, items)]
    return [flag, str(value)]


@functools.cache
def config_types() -> dict:
    """Config's field types (typing.get_type_hints is slow: a study asks for hundreds)."""
    from fusion.config import Config
    return typing.get_type_hints(Config)


def label(value) -> str:
    """A value as part of a folder name."""
    text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
    return "".join(c if c.isalnum() or c in ".+-" else "-" for c in text)


@dataclasses.dataclass
class Run:
    """One run of a sweep: its folder, and the script's arguments when it starts anew."""
    name: str
    folder: Path
    argv: list[str]
    script: str

    def plan(self) -> tuple[str, list[str]]:
        """('finished', []) | ('resume', ['--resume', folder]) | ('start', argv)."""
        if (self.folder / "metrics.json").is_file():
            return "finished", []
        if (self.folder / "last.pt").is_file():
            return "resume", ["--resume", str(self.folder)]
        return "start", self.argv

    def note(self, text: str) -> None:
        """A line in the run's sweep.log (and on the screen)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        line = f"[sweep] {time.strftime('%Y-%m-%d %H:%M:%S')} {self.name}: {text}"
        with open(self.folder / LOG, "a") as log:
            log.write(line + "\n")
        print(line, flush=True)

    def __call__(self) -> dict:
        """The run in this process (submitit's job): skipped, resumed or started; its output
        goes to the job's log and to sweep.log. Failures are returned, not raised."""
        action, argv = self.plan()
        if action == "finished":
            return outcome(self, "finished")
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID", "")
        self.note(f"{'resuming from last.pt' if action == 'resume' else 'starting'} on "
                  f"{socket.gethostname()}, pid {os.getpid()}" + (f", job {job}" if job else ""))
        with open(self.folder / LOG, "a") as log:
            out, err = Tee(sys.stdout, log), Tee(sys.stderr, log)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                    requeue_exit_not_swallowed():
                try:
                    code = load_main(self.script)(argv)
                except Exception as error:  # the run's failure, not the sweep's
                    traceback.print_exc()
                    return outcome(self, "failed", first_line(f"{type(error).__name__}: "
                                                              f"{error}"))
        if code:
            return outcome(self, "failed", error_line(err.lines))
        return outcome(self, "resumed" if action == "resume" else "trained")

    def checkpoint(self):
        """submitit, when the job is preempted or reaches its time limit: requeue this run (it
        resumes from last.pt, the last finished epoch)."""
        import submitit
        return submitit.helpers.DelayedSubmission(self)


REEXIT_S = 0.01  # how soon a swallowed requeue exit is raised again


@contextlib.contextmanager
def requeue_exit_not_swallowed():
    """submitit ends a preempted or timed-out job by raising SystemExit from its SIGUSR2
    handler, after it has arranged the requeue. When the signal lands while the garbage
    collector runs a `__del__` (tqdm's progress bars have one), Python prints "Exception
    ignored" and the job trains on, never requeued: seen here in one preemption out of a few.
    So the handler is wrapped: once it has raised its exit, the same exit is raised again
    every REEXIT_S seconds (SIGALRM) until one takes. Without submitit's handler (not a job),
    or outside the main thread, nothing changes."""
    import signal
    original = signal.getsignal(signal.SIGUSR2)
    if not callable(original) or threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_again(signum, frame):
        raise SystemExit(exit_again.code)

    def handler(signum, frame):
        try:
            original(signum, frame)
        except SystemExit as requeued:
            exit_again.code = requeued.code
            signal.signal(signal.SIGALRM, exit_again)
            signal.setitimer(signal.ITIMER_REAL, REEXIT_S, REEXIT_S)
            raise

    signal.signal(signal.SIGUSR2, handler)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGUSR2, original)


def outcome(run: Run, status: str, error: str = "") -> dict:
    """finished (before this sweep), trained, resumed, or failed with its error line."""
    return {"name": run.name, "status": status, "error": error}


class Tee(io.TextIOBase):
    """Writes through to `stream` and to `log`, keeping the last lines."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log
        self.lines = collections.deque(maxlen=50)

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(text)
        self.lines.extend(line for line in text.splitlines() if line.strip())
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:  # progress bars stay out of the logs
        return False


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def error_line(lines) -> str:
    """A failed run's error: its last 'error: ...' line, else its last line (a traceback's
    exception)."""
    lines = [line.strip() for line in lines if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    return lines[-1] if lines else "no output"


def load_main(script: str):
    """`main` of a script (train_fusion.py), loaded as a module."""
    spec = importlib.util.spec_from_file_location(Path(script).stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def expand(*, grid: dict[str, list], named: dict[str, dict], common: list[str], out: Path,
           script: str) -> list[Run]:
    """Every named run (or one unnamed) times every combination of the grid's values. A run's
    options come after the common ones (so they win), then its folder: --logdir OUT
    --run-name NAME."""
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    runs = []
    for (base, own), point in itertools.product(named.items() or [("", {})], points):
        name = "_".join(filter(None, [base, *(f"{k}-{label(v)}" for k, v in point.items())]))
        if not name:
            raise ValueError("nothing to sweep: give --grid KEY=V1,V2, --run NAME KEY=VALUE or "
                             "a sweep file")
        options = [flag for key, value in {**own, **point}.items()
                   for flag in as_flags(key, value)]
        runs.append(Run(name, out / name, [*common, *options, "--logdir", str(out),
                                           "--run-name", name], script))
    names = [run.name for run in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"runs named twice: {', '.join(twice)}")
    return runs


def gpu_pool() -> list[str]:
    """The GPUs this machine lets us use: CUDA_VISIBLE_DEVICES's entries, else all of them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]


def run_local(runs: list[Run], parallel: int = 1, python: str = sys.executable) -> list[dict]:
    """Each run as its own process of `python SCRIPT`, `parallel` at a time; with more than one
    at a time each gets a GPU of its own (CUDA_VISIBLE_DEVICES), when there are GPUs."""
    gpus = queue.Queue()
    if parallel > 1:
        pool = gpu_pool()
        if pool and len(pool) < parallel:
            raise ValueError(f"--parallel {parallel} gives each run a GPU, but only "
                             f"{len(pool)} are visible ({', '.join(pool)})")
        if not pool:
            print(f"[sweep] no GPU: {parallel} runs at a time on the CPU", flush=True)
        for gpu in pool[:parallel] or [None] * parallel:
            gpus.put(gpu)
    printing = threading.Lock()

    def one(run: Run) -> dict:
        action, argv = run.plan()
        if action == "finished":
            print(f"[sweep] {run.folder} is finished, skipping", flush=True)
            return outcome(run, "finished")
        gpu = gpus.get() if parallel > 1 else None
        try:
            env = dict(os.environ)
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            process = subprocess.Popen([python, run.script, *argv], env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            run.note(f"{'resuming from last.pt' if action == 'resume' else 'starting'}, pid "
                     f"{process.pid}" + (f", CUDA_VISIBLE_DEVICES={gpu}" if gpu else ""))
            tail = collections.deque(maxlen=50)
            prefix = f"[{run.name}] " if parallel > 1 else ""
            with open(run.folder / LOG, "a") as log:
                for line in process.stdout:
                    log.write(line)
                    tail.append(line)
                    with printing:
                        print(prefix + line, end="", flush=True)
            code = process.wait()
        finally:
            if parallel > 1:
                gpus.put(gpu)
        if code:
            return outcome(run, "failed", error_line(tail))
        return outcome(run, "resumed" if action == "resume" else "trained")

    if parallel <= 1:
        return [one(run) for run in runs]
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(one, runs))


def add_launcher_arguments(parser, what: str) -> None:
    """--launcher, --parallel and the Slurm options of scripts that hand `what` (runs, stages)
    to this module's launchers."""
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help=f"local: {what} as processes on this machine; inline: in this "
                             f"process, one after another (no start-up per run: toy sizes); "
                             f"slurm: Slurm jobs through submitit (pip install -e '.[slurm]'); "
                             f"submitit-local: the slurm path run by submitit on this machine "
                             f"(to try it before submitting)")
    parser.add_argument("--parallel", type=int, default=1,
                        help=f"local: {what} at a time, each with a GPU of its own "
                             f"(CUDA_VISIBLE_DEVICES); slurm: most jobs running at once")
    slurm = parser.add_argument_group("slurm (and submitit-local)")
    slurm.add_argument("--time", type=int, default=1440,
                       help="minutes per job; a run still going is requeued and resumes")
    slurm.add_argument("--gpus-per-run", type=int, default=1, help="GPUs of each run's job")
    slurm.add_argument("--cpus-per-run", type=int, default=8, help="also its loader workers")
    slurm.add_argument("--mem-gb", type=float, default=None,
                       help="memory of each run's job (default: Slurm's)")
    slurm.add_argument("--partition", help="Slurm partition (sbatch --partition)")
    slurm.add_argument("--account", help="Slurm account to charge (sbatch --account)")
    slurm.add_argument("--qos", help="Slurm quality of service (sbatch --qos)")
    slurm.add_argument("--constraint", help="node features required (sbatch --constraint)")
    slurm.add_argument("--max-requeues", type=int, default=20,
                       help="time-outs a run may be requeued after (preemptions are free)")
    slurm.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. --slurm exclude=node12")
    slurm.add_argument("--setup", action="append", default=[], metavar="COMMAND",
                       help="a shell line run before each job, e.g. 'module load cuda'")


def submitit_parameters(args, name: str) -> dict:
    """The executor's parameters from add_launcher_arguments' options; `name` names the jobs."""
    if args.launcher == "submitit-local":  # the local executor's knobs only
        return dict(timeout_min=args.time,
                    gpus_per_node=min(args.gpus_per_run, len(gpu_pool())))
    parameters = dict(
        name=name, timeout_min=args.time, nodes=1, tasks_per_node=1,
        cpus_per_task=args.cpus_per_run, gpus_per_node=args.gpus_per_run, mem_gb=args.mem_gb,
        slurm_partition=args.partition, slurm_account=args.account, slurm_qos=args.qos,
        slurm_constraint=args.constraint, slurm_setup=args.setup or None,
        slurm_additional_parameters=dict(item.split("=", 1) for item in args.slurm) or None,
        slurm_array_parallelism=args.parallel if args.parallel > 1 else None)
    return {k: v for k, v in parameters.items() if v is not None}


def check_launcher(args) -> None:
    """add_launcher_arguments' options can start runs: checked before anything is touched."""
    if args.parallel < 1:
        raise ValueError(f"--parallel {args.parallel}: must be >= 1")
    if args.launcher in ("slurm", "submitit-local") and \
            not importlib.util.find_spec("submitit"):
        raise ValueError(f"--launcher {args.launcher} needs submitit: pip install -e "
                         f"'.[slurm]'")


def launch(runs: list[Run], args, jobs: Path, name: str) -> list[dict]:
    """`runs` through the launcher add_launcher_arguments' options name; submitit's files and
    job logs go to `jobs`."""
    check_launcher(args)
    if args.launcher == "local":
        return run_local(runs, args.parallel)
    if args.launcher == "inline":
        return [run() for run in runs]
    executor = make_executor(jobs, parameters=submitit_parameters(args, name),
                             cluster="slurm" if args.launcher == "slurm" else "local",
                             max_requeues=args.max_requeues)
    return run_submitit(runs, executor)


def make_executor(folder: Path, *, cluster: str, parameters: dict, max_requeues: int):
    """submitit's executor for `cluster` ('slurm', or 'local': processes on this machine);
    its jobs' files and logs go to `folder`."""
    try:
        import submitit
    except ImportError:
        raise ValueError("the slurm launcher needs submitit: pip install -e '.[slurm]'") from None
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                     slurm_max_num_timeout=max_requeues)
    executor.update_parameters(**parameters)
    return executor


def run_submitit(runs: list[Run], executor) -> list[dict]:
    """Each unfinished run as a job of `executor` (on Slurm, one job array) running `Run`
    in-process; waits for them all."""
    import submitit
    outcomes, pending = {}, []
    for run in runs:
        if run.plan()[0] == "finished":
            print(f"[sweep] {run.folder} is finished, skipping", flush=True)
            outcomes[run.name] = outcome(run, "finished")
        else:
            pending.append(run)
    if pending:
        with executor.batch():
            jobs = [executor.submit(run) for run in pending]
        for run, job in zip(pending, jobs):
            print(f"[sweep] {run.name}: job {job.job_id}", flush=True)
        by_job = {job.job_id: run for run, job in zip(pending, jobs)}
        poll = 0.5 if executor.cluster == "local" else 30.0  # s; Slurm's state: rate-limited
        for job in submitit.helpers.as_completed(jobs, poll_frequency=poll):
            run = by_job[job.job_id]
            try:
                outcomes[run.name] = job.result()
            except Exception as err:  # the job died (killed, out of memory, out of requeues)
                outcomes[run.name] = outcome(run, "failed", error_line(str(err).splitlines()))
            print(f"[sweep] {run.name}: {outcomes[run.name]['status']}", flush=True)
    return [outcomes[run.name] for run in runs]
