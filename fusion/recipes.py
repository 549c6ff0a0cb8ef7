"""Recipes: a report's study as data. A recipe is a TOML file in configs/recipes/ naming the
stages of a study (each stream, each fused model, the report's test protocol), the configs they
train, how each stage's checkpoint feeds the next, the extraction the data must come from, and
the published numbers to set ours beside. scripts/reproduce.py runs one (fusion/study.py).

    title = "Two-stream ConvNets (Simonyan & Zisserman 2014)"
    report = "NIPS 2014, ..."                 # what it reproduces, for the report's heading
    splits = [1, 2, 3]                        # the official splits it averages; [] for none
    departures = ["ResNet-18 ... for their CNN-M-2048"]   # where we knowingly differ
    hardware = "..."                          # what a full run needs (an estimate)
    [extraction]                              # extract_frames.py's options (--videos), and
    flow = "tvl1"                             # what the data root's extraction.json must say
    [stages.rgb]
    config = "configs/ucf101_resnet18_average.toml"
    set = { fuse = "none", stream = "rgb" }   # train_fusion.py options over the config's
    [stages.fused]
    config = "configs/ucf101_resnet18_average.toml"
    init = { rgb = "rgb", flow = "flow" }     # --init-rgb: stage rgb's tested checkpoint
    [stages.test]
    test = "fused"                            # evaluate.py on stage fused's checkpoint
    clips = 25
    crops = "ten"
    [[rows]]                                  # the report's table: a stage's output
    name = "two-stream (average)"
    stage = "test"
    output = "fused"
    published = 86.9
    source = "their Table 4, mean of the three splits"
    [quick]                                   # options of every training stage in --quick
    rgb = "resnet18"

A stage may also name `data = "NAME"` (a data root given as --data-root NAME=PATH, described
in the recipe's [data] table) and carry its own `quick = {...}`.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "recipes"
RECIPE_KEYS = ("title", "report", "splits", "departures", "hardware", "extraction", "data",
               "stages", "rows", "quick")
TRAIN_KEYS = ("config", "set", "init", "data", "quick")
TEST_KEYS = ("test", "clips", "crops", "aggregate")
ROW_KEYS = ("name", "stage", "output", "published", "source")
# extract_frames.py's options a recipe may set, and the extraction.json key each is recorded as
EXTRACTION_KEYS = {"flow": "flow_method", "bound": "flow_bound", "short_side": "short_side",
                   "pad_square": "pad_square", "flow_pairs": "flow_pairs",
                   "flow_stack": "flow_stack", "flow_format": "flow_format",
                   "raft_model": "raft_model", "layout": None, "store": None}
INIT_STREAMS = ("rgb", "flow", "diff")
OUTPUTS = ("fused", "rgb", "flow", "rgbdiff")  # what a row may read of a stage's test


@dataclass(frozen=True)
class Stage:
    name: str
    config: str = ""  # a training stage's config file (train_fusion.py --config)
    options: dict = field(default_factory=dict)  # train_fusion.py options over the config's
    init: dict = field(default_factory=dict)  # stream -> the stage whose checkpoint starts it
    data: str = ""  # a named data root ("" the study's own)
    quick: dict = field(default_factory=dict)  # options of this stage in --quick
    test: str = ""  # a test stage: the stage whose checkpoint it tests
    protocol: dict = field(default_factory=dict)  # clips, crops, aggregate (evaluate.py's)

    @property
    def kind(self) -> str:
        return "test" if self.test else "train"

    @property
    def after(self) -> tuple[str, ...]:
        """The stages this one needs finished."""
        return (self.test,) if self.test else tuple(self.init.values())


@dataclass(frozen=True)
class Row:
    name: str
    stage: str
    output: str = "fused"  # the model output: fused, rgb, flow, rgbdiff
    published: float | None = None
    source: str = ""


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    title: str
    report: str
    splits: tuple[int, ...]
    departures: tuple[str, ...]
    hardware: str
    extraction: dict
    data: dict  # named data roots and what each holds
    stages: dict  # name -> Stage, in the file's order
    rows: tuple[Row, ...]
    quick: dict

    def waves(self) -> list[list[str]]:
        """The stages in rounds: each round needs only the rounds before it (streams, then
        the fused models, then the tests), so a round's stages run at once."""
        done, waves = set(), []
        while len(done) < len(self.stages):
            wave = [name for name, stage in self.stages.items()
                    if name not in done and set(stage.after) <= done]
            if not wave:
                left = sorted(set(self.stages) - done)
                raise ValueError(f"recipe {self.name}: stages {', '.join(left)} wait for each "
                                 f"other (a circle in init / test)")
            waves.append(wave)
            done.update(wave)
        return waves


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.toml"))


def recipe_path(name: str) -> Path:
    """A recipe by name (configs/recipes/NAME.toml) or by path."""
    path = Path(name)
    if path.suffix == ".toml" and path.is_file():
        return path
    path = RECIPES / f"{name}.toml"
    if not path.is_file():
        import difflib
        close = difflib.get_close_matches(name, list_recipes(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"no recipe {name!r}{hint} (recipes: {', '.join(list_recipes())}; "
                         f"or give a .toml file)")
    return path


def _unknown(where: str, table: dict, known) -> None:
    extra = sorted(set(table) - set(known))
    if extra:
        raise ValueError(f"{where}: unknown keys {', '.join(extra)}; expected "
                         f"{', '.join(known)}")


def load_recipe(name: str) -> Recipe:
    """A recipe, checked: unknown keys, stages that name missing stages or configs, rows that
    name missing stages, and circles are errors naming the file and key."""
    path = recipe_path(name)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"recipe {path}: {err}") from None
    _unknown(f"recipe {path}", data, RECIPE_KEYS)
    for key in ("title", "stages", "rows"):
        if key not in data:
            raise ValueError(f"recipe {path}: no {key!r}")
    _unknown(f"recipe {path} [extraction]", data.get("extraction", {}), EXTRACTION_KEYS)
    stages = {}
    for stage_name, table in data["stages"].items():
        where = f"recipe {path} [stages.{stage_name}]"
        if "test" in table:
            _unknown(where, table, TEST_KEYS)
            stages[stage_name] = Stage(stage_name, test=table["test"], protocol={
                k: table[k] for k in ("clips", "crops", "aggregate") if k in table})
            continue
        _unknown(where, table, TRAIN_KEYS)
        if "config" not in table:
            raise ValueError(f"{where}: a training stage names its config (or a test stage "
                             f"the stage it tests: test = NAME)")
        config = ROOT / table["config"]
        if not config.is_file():
            raise ValueError(f"{where}: config {table['config']} does not exist")
        init = table.get("init", {})
        _unknown(f"{where} init", init, INIT_STREAMS)
        data_name = table.get("data", "")
        if data_name and data_name not in data.get("data", {}):
            raise ValueError(f"{where}: data {data_name!r} is not in the recipe's [data] table")
        stages[stage_name] = Stage(stage_name, config=table["config"],
                                   options=dict(table.get("set", {})), init=dict(init),
                                   data=data_name, quick=dict(table.get("quick", {})))
    for stage in stages.values():
        missing = [s for s in stage.after if s not in stages]
        if missing:
            raise ValueError(f"recipe {path} [stages.{stage.name}]: no stage "
                             f"{', '.join(missing)}")
        if stage.test and stages[stage.test].kind != "train":
            raise ValueError(f"recipe {path} [stages.{stage.name}]: test = {stage.test!r} "
                             f"is not a training stage")
    rows = []
    for i, table in enumerate(data["rows"]):
        _unknown(f"recipe {path} rows[{i}]", table, ROW_KEYS)
        if table.get("stage") not in stages:
            raise ValueError(f"recipe {path} rows[{i}] ({table.get('name')}): stage "
                             f"{table.get('stage')!r} is not one of {', '.join(stages)}")
        if table.get("output", "fused") not in OUTPUTS:
            raise ValueError(f"recipe {path} rows[{i}] ({table.get('name')}): output "
                             f"{table['output']!r} is not one of {', '.join(OUTPUTS)}")
        rows.append(Row(**table))
    recipe = Recipe(
        name=path.stem, path=path, title=data["title"], report=data.get("report", ""),
        splits=tuple(data.get("splits", [1])), departures=tuple(data.get("departures", [])),
        hardware=data.get("hardware", ""), extraction=dict(data.get("extraction", {})),
        data=dict(data.get("data", {})), stages=stages, rows=tuple(rows),
        quick=dict(data.get("quick", {})))
    recipe.waves()  # a circle is an error now, not when the study reaches it
    return recipe


def recorded_extraction(recipe: Recipe) -> dict:
    """The recipe's [extraction] as extraction.json records it (extract_frames.py's defaults
    filled in, so that a root extracted with them matches)."""
    from fusion.data.jobs import Settings
    given = {EXTRACTION_KEYS[k]: v for k, v in recipe.extraction.items() if EXTRACTION_KEYS[k]}
    flow = given.get("flow_method", "tvl1")
    settings = Settings(**{**given, "flow_method": None if flow == "none" else flow})
    return settings.recorded()


def extraction_argv(recipe: Recipe, videos: Path, out: Path) -> list[str]:
    """extract_frames.py's arguments for the recipe's [extraction]."""
    argv = ["--videos", str(videos), "--out", str(out)]
    for key, value in recipe.extraction.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []
        else:
            argv += [flag, str(value)]
    return argv
