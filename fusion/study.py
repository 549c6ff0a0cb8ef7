"""A study: a recipe (fusion/recipes.py) run for some splits and seeds, each stage a run of
train_fusion.py or evaluate.py in DIR/<split>_<seed>/<stage>/ handed to the sweep's launchers
(fusion/sweep.py), then DIR/report.md and report.png (fusion/study_report.py).

A stage's identity is its fingerprint: the resolved Config it trains (what cannot change the
result left out: workers, device, folders; for a single stream, the fusion keys) with each
init checkpoint replaced by the fingerprint of the stage that made it; a test stage's is its
protocol and the tested stage's. A stage whose folder holds metrics.json under the same
fingerprint is done and skipped; one with last.pt resumes; one made under another fingerprint
is moved aside to <stage>.replaced and run again, and so is every stage that depends on it,
because their fingerprints contain its own.
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

from fusion.recipes import ROOT, Recipe, Stage, extraction_argv, recorded_extraction
from fusion.sweep import Run, as_flags

SCRIPTS = ROOT / "scripts"
STATE = "stage.json"  # in each stage folder: its fingerprint, arguments and resolved config
# What --quick sets in every training stage, before the recipe's own [quick]: the synthetic
# data at toy size, one epoch, no downloads.
QUICK = {"image_size": 32, "epochs": 1, "batch_size": 4, "workers": 0, "eval_clips": 1,
         "val_fraction": 0.25, "weights": "none", "classes": [], "max_classes": 0,
         "class_map": [], "device": "cpu"}
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


class Study:
    def __init__(self, recipe: Recipe, out: Path, *, roots: dict[str, Path], cells: list[Cell],
                 quick: bool = False, videos: Path | None = None, extra: dict | None = None):
        self.recipe, self.out, self.roots, self.cells = recipe, Path(out), roots, cells
        self.quick, self.videos = quick, videos
        self.extra = extra or {}  # options of every training stage (reproduce.py --set)
        self.results: dict[tuple[Cell, str], Result] = {}

    # --- what each stage runs ---
    def train_argv(self, stage: Stage, cell: Cell) -> list[str]:
        options = {**stage.options, **self.extra}
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
            values[f"init_{stream}"] = self.results[cell, source].fingerprint
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
        """Every training stage's options resolve, and the data root was extracted as the
        recipe says (its extraction.json) and as each stage's config says; errors name the
        stage and the setting, before any training starts."""
        if not self.videos:
            self.check_extraction(self.roots.get("", None))
        for cell in self.cells[:1]:
            for stage in self.recipe.stages.values():
                if stage.kind != "train":
                    continue
                config = self.resolve(stage, cell, self.train_argv_without_inits(stage, cell))
                if not self.videos:
                    from fusion.build import check_extraction
                    try:
                        check_extraction(config, Path(config.data_root))
                    except ValueError as err:
                        raise ValueError(f"recipe {self.recipe.name}, stage {stage.name}: "
                                         f"{err}") from None

    def train_argv_without_inits(self, stage: Stage, cell: Cell) -> list[str]:
        return self.train_argv(dataclasses.replace(stage, init={}), cell)

    def check_extraction(self, root: Path | None) -> None:
        root = root or self.default_root()
        path = root / "extraction.json"
        if not self.recipe.extraction or not path.is_file():
            return
        recorded = json.loads(path.read_text())
        for key, value in recorded_extraction(self.recipe).items():
            if key in recorded and recorded[key] != value:
                raise ValueError(f"recipe {self.recipe.name} extracts with {key} = {value!r}, "
                                 f"but {path} says the data was extracted with {key} = "
                                 f"{recorded[key]!r}: give a data root extracted as the recipe "
                                 f"says, or --videos to extract one")

    def default_root(self) -> Path:
        """The study's data root: --data-root, else the first training stage's config's."""
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
            result.status, result.error = "blocked", f"stage {', '.join(blocked)} failed"
            return result, None
        if stage.kind == "train":
            argv = self.train_argv(stage, cell)
            config = self.resolve(stage, cell, argv)
            result.fingerprint = self.train_fingerprint(stage, cell, config)
            script, saved = SCRIPTS / "train_fusion.py", config.to_dict()
        else:
            argv = self.test_argv(stage, cell, folder)
            result.fingerprint = digest({"test": self.results[cell, stage.test].fingerprint,
                                         "protocol": stage.protocol, "quick": self.quick})
            script, saved = SCRIPTS / "evaluate.py", dict(stage.protocol)
        state = folder / STATE
        previous = json.loads(state.read_text())["fingerprint"] if state.is_file() else None
        if previous == result.fingerprint and (folder / "metrics.json").is_file():
            result.status = "done"
            return result, None
        if folder.exists() and previous != result.fingerprint:
            aside = folder.with_name(folder.name + ".replaced")
            shutil.rmtree(aside, ignore_errors=True)
            folder.rename(aside)
            print(f"[reproduce] {cell.name}/{stage.name}: made under other settings, moved to "
                  f"{aside.name}; running it again", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"fingerprint": result.fingerprint, "stage": stage.name,
                                     "script": script.name, "argv": argv, "config": saved},
                                    indent=1, default=str))
        return result, Run(f"{cell.name}/{stage.name}", folder, argv, str(script))

    def extract(self, launch) -> bool:
        """extract_frames.py into the study's data root (--videos); it skips videos already
        done, so a relaunch continues. False when it failed."""
        root = self.default_root()
        folder = self.out / "extract"
        argv = extraction_argv(self.recipe, self.videos, root)
        fingerprint = digest(argv)
        state = folder / STATE
        if state.is_file() and json.loads(state.read_text())["fingerprint"] == fingerprint and \
                (folder / "done").is_file():
            print(f"[reproduce] extraction into {root} is done", flush=True)
            return True
        folder.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"fingerprint": fingerprint, "argv": argv}, indent=1))
        (folder / "done").unlink(missing_ok=True)
        [result] = launch([Run("extract", folder, argv, str(SCRIPTS / "extract_frames.py"))])
        if result["status"] == "failed":
            print(f"[reproduce] extraction failed: {result['error']}", file=sys.stderr)
            return False
        (folder / "done").write_text("")
        self.check_extraction(root)
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

