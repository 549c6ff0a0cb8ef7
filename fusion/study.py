"""A study: a recipe (fusion/recipes.py) run for some splits and seeds, each stage a run of
train_fusion.py or evaluate.py in DIR/<split>_<seed>/<stage>/ handed to the sweep's launchers
(fusion/sweep.py), then DIR/report.md and report.png (fusion/study_report.py).

A stage's identity is its fingerprint: the resolved Config it trains (what cannot change the
result left out: workers, device, folders; for a single stream, the fusion keys) with each
init checkpoint replaced by the identity of the run that made it (its stage's fingerprint and
a hash of its metrics.json, so a stream trained again makes its dependents run again); a test
stage's is its protocol and the tested run's. A stage whose folder holds metrics.json under
the same fingerprint is done and skipped; one with last.pt resumes; a folder made under
another fingerprint is set aside as <stage>.<its fingerprint> (never deleted: going back to
those settings restores it) and the stage runs again.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from fusion.files import write_atomic
from fusion.recipes import ROOT, Recipe, Stage, extraction_argv, recorded_extraction
from fusion.sweep import Run, as_flags

SCRIPTS = ROOT / "scripts"
STATE = "stage.json"  # in each stage folder: its fingerprint, arguments and resolved config
# What --quick sets in every training stage, before the recipe's own [quick]: the synthetic
# data at toy size, one epoch, no downloads.
QUICK = {"image_size": 32, "epochs": 1, "batch_size": 4, "workers": 0, "eval_clips": 1,
         "val_fraction": 0.25, "weights": "none", "classes": [], "max_classes": 0,
         "class_map": [], "device": "cpu"}
# Keys the study sets itself (reproduce.py --set may not): each cell's split and seed, the data
# roots, the checkpoints that start a stage, and keeping the checkpoint its dependents read.
OWNED = ("seed", "split", "data_root", "init_rgb", "init_flow", "init_diff", "keep")
# Keys that cannot change a stage's result (or change only where its files go).
NOT_RESULTS = ("workers", "device", "resume", "logdir", "run_name", "keep", "dist_timeout",
               "decode", "frames", "compile_mode")
# Keys that mean nothing to a stream trained alone (fuse = none).
FUSION_ONLY = ("at", "at_flow", "fusion_init", "fusion_bn", "fusion_weights",
               "keep_spatial_head", "keep_temporal_tower", "kept_average", "diff_weight")


@dataclass(frozen=True)
class Cell:
    """One split and seed of a study; split None for a dataset without official splits."""
    split: int | None
    seed: int

    @property
    def name(self) -> str:
        return (f"split{self.split}_" if self.split is not None else "") + f"seed{self.seed}"


@dataclass
class Result:
    """A stage in a cell: where it ran and what became of it."""
    cell: Cell
    stage: Stage
    folder: Path
    fingerprint: str = ""
    status: str = ""  # done (before), trained, resumed, failed, blocked
    error: str = ""

    @property
    def metrics(self) -> dict | None:
        path = self.folder / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def state(self) -> dict:
        return read_state(self.folder) or {}

    @property
    def identity(self) -> str:
        """This run of the stage: its fingerprint and its result's hash."""
        return f"{self.fingerprint}/{digest((self.folder / 'metrics.json').read_text())}"

    @property
    def checkpoint(self) -> str:
        """The checkpoint a training stage tested (best.pt, else last.pt): what the next
        stages start from."""
        return self.metrics["checkpoint"]


@functools.cache
def train_parser():
    """train_fusion.py's parser, built once (building it reads Config's comments)."""
    from fusion.config import build_parser
    return build_parser()


def digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_state(folder: Path) -> dict | None:
    """A stage folder's stage.json; None when absent or unreadable (a stage whose state is
    lost is run again, its folder set aside)."""
    path = folder / STATE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as err:
        print(f"[reproduce] {path} is unreadable ({err}): the stage runs again", flush=True)
        return {"fingerprint": "unreadable"}


def write_state(folder: Path, state: dict) -> None:
    text = json.dumps(state, indent=1, default=str).encode()
    write_atomic(folder / STATE, lambda f: f.write(text))


def has_work(folder: Path) -> bool:
    """A folder holds what took time to make: a result or a checkpoint."""
    return any((folder / name).is_file() for name in ("metrics.json", "last.pt", "best.pt"))


def set_aside(folder: Path, fingerprint: str) -> Path | None:
    """Move a stage folder made under `fingerprint` to <stage>.<fingerprint> (numbered when that
    exists); a folder with nothing in it worth keeping is removed instead."""
    if not has_work(folder):
        shutil.rmtree(folder)
        return None
    aside, n = folder.with_name(f"{folder.name}.{fingerprint}"), 1
    while aside.exists():
        n += 1
        aside = folder.with_name(f"{folder.name}.{fingerprint}.{n}")
    folder.rename(aside)
    return aside


class Study:
    def __init__(self, recipe: Recipe, out: Path, *, roots: dict[str, Path], cells: list[Cell],
                 quick: bool = False, videos: Path | None = None, extra: dict | None = None):
        self.recipe, self.out, self.roots, self.cells = recipe, Path(out), roots, cells
        self.quick, self.videos = quick, videos
        self.extra = extra or {}  # options of every training stage (reproduce.py --set)
        self.results: dict[tuple[Cell, str], Result] = {}

    # --- what each stage runs ---
    def train_argv(self, stage: Stage, cell: Cell) -> list[str]:
        options = {**self.extra, **stage.options}  # a stage's own settings win over --set
        if self.quick:
            options.update(QUICK)
            if stage.options.get("epochs") == 0:  # a stage that assembles and tests stays so
                options["epochs"] = 0
            if not stage.data:
                options["dataset"] = "synthetic"
            options.update(self.recipe.quick)
            options.update(stage.quick)
        if stage.data or self.quick or "" in self.roots:
            options["data_root"] = str(self.roots[stage.data])
        if cell.split is not None:
            options["split"] = cell.split
        options["seed"] = cell.seed
        for stream, source in stage.init.items():
            options[f"init_{stream}"] = self.results[cell, source].checkpoint
        argv = ["--config", str(ROOT / stage.config)]
        for key, value in options.items():
            argv += as_flags(key, value)
        return argv + ["--logdir", str(self.out / cell.name), "--run-name", stage.name]

    def resolve(self, stage: Stage, cell: Cell, argv: list[str]):
        from fusion.config import resolve
        try:
            return resolve(train_parser().parse_args(argv))
        except SystemExit:  # argparse has printed the option's error
            raise ValueError(f"recipe {self.recipe.name}, stage {stage.name}: bad options "
                             f"{' '.join(argv)}") from None
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(f"recipe {self.recipe.name}, stage {stage.name} ({cell.name}): "
                             f"{err}") from None

    def train_fingerprint(self, stage: Stage, cell: Cell, config) -> str:
        values = {k: v for k, v in config.to_dict().items() if k not in NOT_RESULTS}
        if config.fuse == "none":
            values = {k: v for k, v in values.items() if k not in FUSION_ONLY}
        for stream, source in stage.init.items():
            values[f"init_{stream}"] = self.results[cell, source].identity
        values["data_root"] = str(Path(config.data_root).resolve())
        return digest(values)

    def test_argv(self, stage: Stage, cell: Cell, folder: Path) -> list[str]:
        tested = self.results[cell, stage.test]
        argv = ["--checkpoint", tested.checkpoint, "--out", str(folder / "metrics.json")]
        for key, value in stage.protocol.items():
            argv += [f"--{key}", str(value)]
        if self.quick:
            argv += ["--clips", "1", "--workers", "0", "--device", "cpu"]
        return argv

    # --- checks before anything runs ---
    def preflight(self) -> None:
        """Before anything runs: the data roots exist; every training stage's options resolve
        (keep = last is refused: the next stage reads the tested checkpoint); and the data root
        was extracted, or will be (--videos), as the recipe says and as each stage's config
        says. Errors name the stage, the setting and the file."""
        from fusion.build import check_recorded
        for name, root in self.roots.items():
            if not root.is_dir() and not (self.videos and name == ""):
                what = f"data root {name!r}" if name else "data root"
                raise ValueError(f"recipe {self.recipe.name}: {what} {root} does not exist"
                                 + ("; --videos extracts one" if not name else ""))
        main_root = self.default_root
        path = main_root / "extraction.json"
        recorded = json.loads(path.read_text()) if path.is_file() else None
        self.check_extraction(recorded, str(path))
        if self.videos:  # what the extraction will record, before it runs for hours
            recorded, path = recorded_extraction(self.recipe), f"recipe {self.recipe.name}'s " \
                f"[extraction]"
        for stage in self.recipe.stages.values():
            if stage.kind != "train":
                continue
            config = self.resolve(stage, self.cells[0],
                                  self.train_argv_without_inits(stage, self.cells[0]))
            if config.keep == "last":
                raise ValueError(f"recipe {self.recipe.name}, stage {stage.name}: keep = 'last' "
                                 f"removes the best.pt the next stages start from")
            if recorded is not None and Path(config.data_root).resolve() == main_root.resolve():
                try:
                    check_recorded(config, recorded, str(path))
                except ValueError as err:
                    raise ValueError(f"recipe {self.recipe.name}, stage {stage.name}: "
                                     f"{err}") from None

    def train_argv_without_inits(self, stage: Stage, cell: Cell) -> list[str]:
        return self.train_argv(dataclasses.replace(stage, init={}), cell)

    def check_extraction(self, recorded: dict | None, source: str) -> None:
        """The recipe's [extraction] against what a data root's extraction.json records."""
        if not self.recipe.extraction or recorded is None:
            return
        for key, value in recorded_extraction(self.recipe).items():
            if key in recorded and recorded[key] != value:
                raise ValueError(f"recipe {self.recipe.name} extracts with {key} = {value!r}, "
                                 f"but {source} says the data was extracted with {key} = "
                                 f"{recorded[key]!r}: give a data root extracted as the recipe "
                                 f"says" + ("" if self.videos else ", or --videos to extract "
                                            "one"))

    @functools.cached_property
    def default_root(self) -> Path:
        """The study's data root: --data-root, else the first training stage's config's
        (resolved once: the roots do not change)."""
        if "" in self.roots:
            return self.roots[""]
        stage = next(s for s in self.recipe.stages.values() if s.kind == "train" and not s.data)
        return Path(self.resolve(stage, self.cells[0],
                                 self.train_argv_without_inits(stage, self.cells[0])).data_root)

    # --- running ---
    def prepare(self, stage: Stage, cell: Cell) -> tuple[Result, Run | None]:
        """The stage's Result, and the Run to launch (None: done before, or blocked)."""
        folder = self.out / cell.name / stage.name
        result = Result(cell, stage, folder)
        blocked = [s for s in stage.after if self.results[cell, s].status in ("failed", "blocked")]
        if blocked:
            result.status, result.error = "blocked", f"stage {', '.join(blocked)} did not finish"
            return result, None
        if stage.kind == "train":
            argv = self.train_argv(stage, cell)
            config = self.resolve(stage, cell, argv)
            result.fingerprint = self.train_fingerprint(stage, cell, config)
            script, saved = SCRIPTS / "train_fusion.py", config.to_dict()
        else:
            argv = self.test_argv(stage, cell, folder)
            result.fingerprint = digest({"test": self.results[cell, stage.test].identity,
                                         "protocol": stage.protocol, "quick": self.quick})
            script, saved = SCRIPTS / "evaluate.py", dict(stage.protocol)
        previous = (read_state(folder) or {}).get("fingerprint")
        if previous == result.fingerprint and (folder / "metrics.json").is_file():
            result.status = "done"
            return result, None
        kept = folder.with_name(f"{folder.name}.{result.fingerprint}")
        if folder.exists() and previous != result.fingerprint:
            aside = set_aside(folder, previous or "unknown")
            if aside:
                print(f"[reproduce] {cell.name}/{stage.name}: made under other settings, set "
                      f"aside as {aside.name}", flush=True)
        if (kept / "metrics.json").is_file():  # these settings ran before: restore that run
            kept.rename(folder)
            print(f"[reproduce] {cell.name}/{stage.name}: restored from {kept.name}", flush=True)
            result.status = "done"
            return result, None
        folder.mkdir(parents=True, exist_ok=True)
        write_state(folder, {"fingerprint": result.fingerprint, "stage": stage.name,
                             "script": script.name, "argv": argv, "config": saved,
                             "commit": commit(), "extraction": self.extraction_of(saved)})
        return result, Run(f"{cell.name}/{stage.name}", folder, argv, str(script))

    def extraction_of(self, config: dict) -> dict | None:
        """The extraction.json of the data root a stage reads, as it is when the stage starts."""
        path = Path(config.get("data_root") or self.default_root) / "extraction.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def extract(self, launch) -> bool:
        """extract_frames.py into the study's data root (--videos); it skips videos already
        done, so a relaunch continues. False when it failed."""
        root = self.default_root
        folder = self.out / "extract"
        argv = extraction_argv(self.recipe, self.videos, root)
        fingerprint = digest(argv)
        if (read_state(folder) or {}).get("fingerprint") == fingerprint and \
                (folder / "done").is_file():
            print(f"[reproduce] extraction into {root} is done", flush=True)
            return True
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "done").unlink(missing_ok=True)
        write_state(folder, {"fingerprint": fingerprint, "argv": argv, "commit": commit()})
        [result] = launch([Run("extract", folder, argv, str(SCRIPTS / "extract_frames.py"))])
        if result["status"] == "failed":
            print(f"[reproduce] extraction failed: {result['error']}", file=sys.stderr)
            return False
        (folder / "done").write_text("")
        path = root / "extraction.json"
        self.check_extraction(json.loads(path.read_text()) if path.is_file() else None,
                              str(path))
        return True

    def run(self, launch) -> list[Result]:
        """Every stage of every cell, a round at a time (streams, fused models, tests);
        `launch(runs) -> outcomes` is the sweep's launcher. A failed stage blocks only the
        stages that need it."""
        if self.videos and not self.extract(launch):
            return []
        for wave in self.recipe.waves():
            pending = []
            for cell in self.cells:
                for name in wave:
                    result, run = self.prepare(self.recipe.stages[name], cell)
                    self.results[cell, name] = result
                    if result.status == "done":
                        print(f"[reproduce] {cell.name}/{name}: done before, skipped", flush=True)
                    if run is not None:
                        pending.append((result, run))
            for (result, _), got in zip(pending, launch([run for _, run in pending])):
                result.status, result.error = got["status"], got["error"]
                if result.status == "finished":  # Run.plan's word for a finished run
                    result.status = "done"
        return [self.results[cell, name] for cell in self.cells for name in self.recipe.stages]



def commit() -> str:
    """The checkout's commit, "+ uncommitted changes" when its tracked files differ from it."""
    import subprocess
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                "--untracked-files=no"], text=True, capture_output=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" + uncommitted changes" if dirty else "")
