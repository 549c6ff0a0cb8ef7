"""Run configuration: one flat dataclass with commented defaults, read from TOML, every key
overridable on the command line (`--flow-stack 5` sets `flow_stack`).

Precedence: defaults < `--config file.toml` < command-line flags. Unknown keys and bad values
are errors that name the key. Every path (data_root, the list files, class_names, weights,
init_*, raft_weights, logdir, resume, and --config itself), on the command line or in a TOML
file, is relative to the working directory the command runs in. The resolved config is saved
in the run folder and in every checkpoint; resuming takes the architecture from the
checkpoint.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from fusion.cli import ArgumentParser
from fusion.choices import (DATASET_NAMES, FLOW_FORMATS, FRAME_STORES, FREEZE_MODES,
                            FUSION_BN, KEPT_AVERAGES)
from fusion.data.flow import METHODS, RAFT_MODELS
from fusion.data.rawframes import TEMPLATES as RAWFRAME_TEMPLATES
from fusion.data.sampling import POLICIES, SPREAD
from fusion.data.transforms import CROP_MODES, FLOW_AUGMENTS, RGB_AUGMENTS
from fusion.fusers import FUSIONS
from fusion.streams import STREAMS
from fusion.timm_streams import check_name, is_timm

SCHEDULES = ("step", "cyclic", "plateau", "cosine", "constant")
CYCLIC_MODES = ("triangular", "triangular2", "exp_range", "halve-peak")
OPTIMIZERS = ("sgd", "adam", "adamw")
AMP_MODES = ("auto", "none", "bf16", "fp16")
CHANNELS_LAST = ("auto", "on", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BEST_RULES = ("both", "loss", "accuracy")
KEEP = ("both", "best", "last")
AGGREGATES = ("mean-softmax", "sum-logits", "vote")
DECODES = ("auto", "cpu", "device")
# Keys that may change when a run is resumed; everything else comes from the checkpoint.
RESUMABLE = ("epochs", "device", "workers", "resume", "amp", "compile", "compile_mode",
             "channels_last", "decode", "keep", "dist_timeout", "frames")


@dataclass
class Config:
    # --- data ---
    # synthetic | ucf101 | hmdb51 | folder | rawframes (MMAction2's) | images (still images)
    dataset: str = "synthetic"
    data_root: str = "data/synthetic"  # dataset root; synthetic data is generated there if absent
    # how the root keeps its frames: loose (a file per frame) | packed (a tar per video under
    # <data_root>/packs/, scripts/pack_frames.py; the same bytes, the same samples) | auto
    # (packed when <data_root>/packs/ exists)
    frames: str = "auto"
    split: int = 1  # official split 1-3 (ucf101, hmdb51, synthetic)
    # rawframes: MMAction2 list file of the training videos, "<video dir> <total_frames>
    # <label from 0>" a line
    train_list: str = ""
    val_list: str = ""  # rawframes: list file of the validation videos; empty: val_fraction
    test_list: str = ""  # rawframes: list file of the test videos
    # rawframes: class names, one a line in label order; empty: the labels are the names
    class_names: str = ""
    # rawframes: the frames folder under data_root (MMAction2's data_prefix)
    rawframes_dir: str = "rawframes"
    # rawframes: file names of the RGB, flow x and flow y frames, with a number field
    rawframe_templates: list[str] = field(default_factory=lambda: list(RAWFRAME_TEMPLATES))
    classes: list[str] = field(default_factory=list)  # class subset by name; empty: all
    max_classes: int = 0  # class subset: the first N classes; 0: all
    val_fraction: float = 0.1  # stratified part of the training list held out for validation
    oversample: bool = False  # duplicate videos of small classes in training (seed 001)
    segments: int = 1  # T: TSN segments per clip
    flow_stack: int = 10  # L: consecutive flow frames per snippet
    rgb_stack: int = 1  # L_rgb: RGB frames per snippet (seed 003: 10)
    # tsn | middle | first | last | first-middle | middle-last | random | spread-around-middle
    # (seed 001: the flow between L + 1 frames spread around the middle, extracted for it)
    frame_policy: str = "tsn"
    image_size: int = 224  # network input side
    # training augmentation of the RGB stream (and RGB differences): tsn (multi-scale crop +
    # flip) | seed001 (seed 001's photometric and geometric list on the whole frame, no crop) |
    # none (the whole frame)
    augment: str = "tsn"
    # of the flow stream: tsn | none (the whole frame). Both tsn: one crop and flip for both
    augment_flow: str = "tsn"
    # multi-scale crop sides as fractions of the short side; empty: TSN's per modality (1, .875,
    # .75, .66 for an RGB stream alone; 1, .875, .75 with flow or RGB differences)
    crop_scales: list[float] = field(default_factory=list)
    # Simonyan's camera-motion compensation: each flow field minus its mean (in normalisation)
    flow_mean_subtraction: bool = False
    on_bad: str = "raise"  # raise | skip: what a missing or corrupt frame does
    # how the flow frames were made: tvl1 | tvl1-torch | dis | farneback | raft
    flow_method: str = "tvl1"
    flow_bound: float = 20.0  # their quantisation bound in pixels (docs/design.md §5)
    short_side: int = 256  # their frames' short side (predict.py prepares new videos alike)
    pad_square: bool = False  # frames zero-padded to squares before resizing (seed 001)
    raft_model: str = "large"  # flow_method raft: torchvision's raft_large | raft_small
    raft_weights: str = "default"  # "default" (torchvision's) | path of a RAFT state-dict file
    # what the flow stream sees: uv (2 channels per flow frame) | rgb (seed 001: each field as
    # a colour image in the Middlebury coding on its video's one scale, 3 channels,
    # ImageNet-normalised; extracted with --flow-format rgb, unaugmented)
    flow_format: str = "uv"
    workers: int = 2  # DataLoader worker processes
    # where JPEG frames are decoded and cropped: cpu (in the loader's workers, the reference) |
    # device (workers only read bytes and draw the crops; the batch is decoded on the training
    # device, nvJPEG on CUDA; an error for augmentations it cannot reproduce, e.g. augment =
    # seed001, and for dataset images) | auto (device when training on CUDA and possible,
    # else cpu, saying why)
    decode: str = "cpu"
    # --- model ---
    fuse: str = "conv1x1"  # average, sum, max, concat, conv1x1, conv3d, bilinear, or none
    stream: str = "rgb"  # with fuse = none: the stream to train alone (rgb | flow | rgbdiff)
    rgb: str = "resnet18"  # RGB backbone
    flow: str = "resnet18"  # flow backbone
    at: str = "layer4"  # RGB tap to fuse at (scores for average)
    at_flow: str = ""  # flow tap; empty: the deepest with the same reduction
    weights: str = "none"  # none | imagenet | path of a torchvision state-dict file
    init_rgb: str = ""  # checkpoint of a trained RGB stream
    init_flow: str = ""  # checkpoint of a trained flow stream
    diff: str = ""  # backbone of an RGB-difference stream late-fused on top (TSN); empty: none
    diff_stack: int = 5  # L: RGB differences per snippet (made from L + 1 frames)
    diff_weight: float = 1.0  # its weight against the fused softmax (mid-level fusion)
    init_diff: str = ""  # checkpoint of a trained RGB-difference stream
    # init_rgb from other classes: "SOURCE:TARGET" per class, e.g. ["applauding:clap"]
    class_map: list[str] = field(default_factory=list)
    dropout: float = -1.0  # before the classifiers; -1: the backbone's default
    keep_spatial_head: bool = False  # at the last tap: average in the RGB head (seed 001)
    keep_temporal_tower: bool = False  # run the flow tower on and average its scores in
    kept_average: str = "logits"  # kept heads join the fused scores as: logits | softmax
    fusion_init: str = "identity"  # identity ([I I], Feichtenhofer) | random (conv fusions)
    # conv fusions: auto (BatchNorm + ReLU at the last tap, seed 001; a conv with bias alone at
    # inner taps, Feichtenhofer) | on | off
    fusion_bn: str = "auto"
    fusion_weights: list[float] = field(default_factory=list)  # average: e.g. [1, 1.5]
    # none | streams (train only the fusion) | bn (the streams' BatchNorm fixed)
    freeze: str = "none"
    partial_bn: bool = False  # TSN partial BN: all BatchNorm but the first frozen
    freeze_until: str = ""  # staged fine-tuning: stream stages up to this tap start frozen
    # staged fine-tuning: later freeze points, "EPOCH:TAP" or "EPOCH:none" (1-based epochs)
    unfreeze: list[str] = field(default_factory=list)
    # --- optimisation ---
    epochs: int = 10  # 0: assemble the model (e.g. trained streams, late fusion) and test it
    batch_size: int = 8  # clips per training step (per process under torchrun)
    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float = 1e-3  # learning rate (the peak of warm-up and cosine)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # the optimizer's weight decay
    schedule: str = "step"  # step | cyclic | plateau | cosine | constant (stepped per epoch)
    step_size: int = 5  # step: epochs between decays (seed 001: halve every 5)
    gamma: float = 0.5  # step: decay factor; plateau: reduction factor
    base_lr: float = 1e-5  # cyclic: lower bound (seed 001)
    max_lr: float = 1e-4  # cyclic: first peak (seed 001)
    cycle_up: int = 5  # cyclic: epochs from base to max (and as many back down)
    cyclic_mode: str = "triangular2"  # triangular | triangular2 | exp_range | halve-peak (seed 001)
    cyclic_gamma: float = 1.0  # exp_range: peak decay per epoch
    patience: int = 2  # plateau: epochs without validation-loss improvement
    warmup_epochs: int = 0  # cosine: linear warm-up
    grad_clip: float = 0.0  # max gradient norm; 0: off
    amp: str = "auto"  # auto (bf16/fp16 on GPU, off on CPU) | none | bf16 | fp16
    # NHWC weights, faster convolutions with AMP: auto (on GPUs) | on (also on the CPU) | off
    channels_last: str = "auto"
    compile: bool = False  # torch.compile the training step
    # torch.compile mode: default | reduce-overhead (CUDA graphs: small models on fast GPUs wait
    # on kernel launches, not the GPU) | max-autotune | max-autotune-no-cudagraphs
    compile_mode: str = "default"
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over all processes
    # under torchrun: seconds a collective waits for the other processes (gloo and NCCL) before
    # the run stops naming the lost ranks; longer than any pause of one rank alone
    dist_timeout: float = 600.0
    # --- runs ---
    best_rule: str = "both"  # both: val loss and accuracy improve (seed 001) | loss | accuracy
    run_name: str = ""  # runs/<run_name>; empty: from fusion, tap and time
    logdir: str = "runs"  # the folder that holds the run folders
    resume: str = ""  # run folder or checkpoint to continue
    # checkpoints a finished run keeps: both | best (best.pt: weights for evaluation and
    # fine-tuning; what a sweep needs) | last (last.pt: what a resume needs)
    keep: str = "both"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # seeds the model's initialisation, the data order and augmentation
    eval_clips: int = 25  # test protocol: clips per video (Simonyan: 25)
    # center | three | ten | full (the whole frame, seed 001); validation takes full where this
    # is full, else the centre crop
    eval_crops: str = "center"
    aggregate: str = "mean-softmax"  # clip -> video: mean-softmax | sum-logits | vote

    def validate(self) -> "Config":
        def choice(key, valid):
            if getattr(self, key) not in valid:
                raise ValueError(f"config key {key}: {getattr(self, key)!r} is not one of "
                                 f"{', '.join(map(str, valid))}")

        def positive(*keys):
            for key in keys:
                if getattr(self, key) <= 0:
                    raise ValueError(f"config key {key}: must be > 0, got {getattr(self, key)}")
        choice("dataset", DATASET_NAMES)
        choice("split", (1, 2, 3))
        choice("frame_policy", POLICIES)
        choice("augment", RGB_AUGMENTS)
        choice("augment_flow", FLOW_AUGMENTS)
        choice("on_bad", ("raise", "skip"))
        choice("flow_method", METHODS)
        choice("raft_model", RAFT_MODELS)
        choice("flow_format", FLOW_FORMATS)
        choice("fuse", (*FUSIONS, "none"))
        choice("stream", ("rgb", "flow", "rgbdiff"))
        for key in ("rgb", "flow", "diff") if self.diff else ("rgb", "flow"):
            if is_timm(getattr(self, key)):
                try:
                    check_name(getattr(self, key))
                except ValueError as err:
                    raise ValueError(f"config key {key}: {err}") from None
            else:
                choice(key, (*STREAMS, "timm:<any timm model>"))
        choice("fusion_init", ("identity", "random"))
        choice("fusion_bn", FUSION_BN)
        choice("kept_average", KEPT_AVERAGES)
        choice("freeze", FREEZE_MODES)
        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("cyclic_mode", CYCLIC_MODES)
        choice("amp", AMP_MODES)
        choice("channels_last", CHANNELS_LAST)
        choice("compile_mode", COMPILE_MODES)
        choice("best_rule", BEST_RULES)
        choice("keep", KEEP)
        choice("eval_crops", CROP_MODES)
        choice("aggregate", AGGREGATES)
        choice("decode", DECODES)
        choice("frames", FRAME_STORES)
        positive("segments", "flow_stack", "rgb_stack", "image_size", "batch_size",
                 "flow_bound", "short_side", "diff_stack", "diff_weight",
                 "lr", "step_size", "base_lr", "max_lr", "cycle_up", "eval_clips", "dist_timeout")
        if any(not 0 < s <= 1 for s in self.crop_scales):
            raise ValueError(f"config key crop_scales: fractions in (0, 1] of the short side, "
                             f"got {self.crop_scales}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"config key val_fraction: must be in [0, 1), got {self.val_fraction}")
        if self.workers < 0 or self.max_classes < 0 or self.grad_clip < 0 or self.epochs < 0:
            raise ValueError("config keys workers, max_classes, grad_clip, epochs must be >= 0")
        if self.dropout != -1 and not 0 <= self.dropout < 1:
            raise ValueError(f"config key dropout: must be in [0, 1) or -1, got {self.dropout}")
        if self.flow_format == "rgb" and self.flow_mean_subtraction:
            raise ValueError("config key flow_mean_subtraction: applies to uv flow, not to "
                             "flow_format = 'rgb' (colour-coded fields)")
        if self.flow_format == "rgb" and "flow" in self.modalities and (
                self.augment_flow != "none" or self.eval_crops == "ten"):
            # mirroring a colour-coded field would need its hues remapped, not its pixels
            raise ValueError("config keys augment_flow / eval_crops: flow_format = 'rgb' "
                             "(colour images) cannot be flipped; use augment_flow = 'none' (as "
                             "seed 001) and eval_crops center, three or full")
        if self.flow_format == "rgb" and self.dataset == "rawframes" and \
                "flow" in self.modalities:
            raise ValueError("config key flow_format: MMAction2's rawframes hold flow_x / "
                             "flow_y images; flow_format = 'rgb' reads the colour images of "
                             "extract_frames.py --flow-format rgb")
        if self.frame_policy == SPREAD and (self.flow_stack % 2 or self.segments != 1):
            raise ValueError(f"config key frame_policy: {SPREAD} needs an even flow_stack and "
                             f"segments = 1, got {self.flow_stack} and {self.segments}")
        if self.dataset == "rawframes" and not (self.train_list and self.test_list):
            raise ValueError("config keys train_list and test_list: dataset 'rawframes' reads "
                             "MMAction2 list files; give both (and val_list if you have one)")
        if len(self.rawframe_templates) != 3 or any(
                "{" not in t for t in self.rawframe_templates):
            raise ValueError(f"config key rawframe_templates: three file names with a number "
                             f"field (RGB, flow x, flow y), got {self.rawframe_templates}")
        if self.classes and self.max_classes:
            raise ValueError("config keys classes and max_classes: give one of them")
        self.unfreeze_steps()
        self.class_mapping()
        if self.sync_bn and (self.freeze != "none" or self.partial_bn or self.freeze_until):
            raise ValueError("config key sync_bn: synchronising BatchNorm statistics and holding "
                             "them fixed (freeze, partial_bn, freeze_until) exclude each other")
        if self.class_map and not self.init_rgb:
            raise ValueError("config key class_map: maps the classes of init_rgb; set init_rgb")
        if self.dataset == "images" and (self.fuse, self.stream) != ("none", "rgb"):
            raise ValueError("config key dataset: still images train an RGB stream alone "
                             "(fuse = 'none', stream = 'rgb')")
        if (self.freeze_until or self.unfreeze) and (self.freeze != "none" or self.partial_bn):
            raise ValueError("config keys freeze_until / unfreeze: staged unfreezing does not "
                             "combine with freeze or partial_bn")
        if self.fuse == "average" and self.fusion_weights and \
                len(self.fusion_weights) != (3 if self.diff else 2):
            raise ValueError(f"config key fusion_weights: average fusion of "
                             f"{3 if self.diff else 2} streams needs as many weights, got "
                             f"{self.fusion_weights}")
        if self.fuse == "average" and self.at not in ("scores", ""):
            raise ValueError(f"config key at: average fusion combines scores, set at = "
                             f"'scores' (got {self.at!r})")
        return self

    def class_mapping(self) -> dict[str, str]:
        """`class_map` parsed: source class -> target class."""
        mapping = {}
        for entry in self.class_map:
            source, _, target = entry.partition(":")
            if not source or not target:
                raise ValueError(f"config key class_map: {entry!r} is not 'SOURCE:TARGET'")
            mapping[source] = target
        return mapping

    def unfreeze_steps(self) -> list[tuple[int, str | None]]:
        """`unfreeze` parsed: (1-based epoch, tap or None), epochs increasing."""
        steps = []
        for entry in self.unfreeze:
            epoch, _, tap = entry.partition(":")
            if not epoch.isdigit() or not tap or int(epoch) < 1:
                raise ValueError(f"config key unfreeze: {entry!r} is not 'EPOCH:TAP' or "
                                 f"'EPOCH:none' with EPOCH >= 1")
            if steps and int(epoch) <= steps[-1][0]:
                raise ValueError(f"config key unfreeze: epochs must increase, got {entry!r}")
            steps.append((int(epoch), None if tap == "none" else tap))
        return steps

    def frozen_until(self, epoch: int) -> str | None:
        """The freeze point in force during 0-based `epoch`."""
        tap = self.freeze_until or None
        for start, step_tap in self.unfreeze_steps():
            if epoch + 1 >= start:
                tap = step_tap
        return tap

    @property
    def modalities(self) -> tuple[str, ...]:
        """What the data must load (an RGB-difference stream reads RGB frames)."""
        if self.fuse == "none":
            return ("flow",) if self.stream == "flow" else ("rgb",)
        return ("rgb", "flow")

    @property
    def uses_rgbdiff(self) -> bool:
        """An RGB-difference stream takes part (a third stream, or the one trained alone)."""
        return bool(self.diff) or (self.fuse == "none" and self.stream == "rgbdiff")

    @property
    def rgb_frames(self) -> int:
        """RGB frames per snippet in the input: the RGB stack, or L + 1 for the differences,
        whichever is more (each stream takes the frames centred in the snippet).

        With both an RGB and a difference stream the count keeps the RGB stack's parity (one
        frame more where needed), so that the RGB stream's frames, centred within the carried
        ones, are exactly the frames centred in the flow window; the differences are then
        centred to within one frame."""
        uses_rgb = not (self.fuse == "none" and self.stream == "rgbdiff")
        carried = max(self.rgb_stack if uses_rgb else 0,
                      self.diff_stack + 1 if self.uses_rgbdiff else 0)
        if uses_rgb and (carried - self.rgb_stack) % 2:
            carried += 1
        return carried

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _field_type(f: dataclasses.Field):
    hints = typing.get_type_hints(Config)
    return hints[f.name]


def _coerce(key: str, value, kind, source: str):
    """Check a TOML value against the field's type (ints are accepted for floats)."""
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise ValueError(f"{source}: key {key} must be a list of {item.__name__}, "
                             f"got {value!r}")
        return [_coerce(key, v, item, source) for v in value]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{source}: key {key} must be {kind.__name__}, got {value!r}")
    return value


def load_toml(path: str | Path) -> dict:
    """Read a config file; unknown keys and ill-typed values are errors naming the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {path} is not valid TOML: {err}") from err
    known = {f.name: f for f in fields(Config)}
    out = {}
    for key, value in data.items():
        if key not in known:
            raise ValueError(f"config file {path}: unknown key {key!r}")
        out[key] = _coerce(key, value, _field_type(known[key]), f"config file {path}")
    return out


def key_descriptions() -> dict[str, str]:
    """Each Config key's description, read from the class's own comments (one source for the
    code and --help): the comment lines right above the key and the comment ending its line."""
    lines = textwrap.dedent(inspect.getsource(Config)).splitlines()
    body = ast.parse("\n".join(lines)).body[0].body
    descriptions = {}
    for node in body:
        if not isinstance(node, ast.AnnAssign):
            continue
        above, row = [], node.lineno - 2
        while row >= 0 and lines[row].strip().startswith("#") and "---" not in lines[row]:
            above.insert(0, lines[row].strip().lstrip("# "))
            row -= 1
        trailing = lines[node.end_lineno - 1][node.end_col_offset:].strip().lstrip("# ")
        descriptions[node.target.id] = " ".join(filter(None, [*above, trailing]))
    return descriptions


def build_parser(description: str = "") -> ArgumentParser:
    """`--config` plus one flag per Config key, described by its comment; unset flags stay None
    (not given)."""
    parser = ArgumentParser(description, argument_default=None)
    parser.add_argument("--config", help="TOML file with Config keys (its paths, like every "
                                         "path option, relative to the working directory)")
    descriptions = key_descriptions()
    for f in fields(Config):
        kind = _field_type(f)
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if not descriptions[f.name]:
            raise TypeError(f"Config.{f.name} has no comment saying what it does (--help "
                            f"shows it)")
        help_text = f"{descriptions[f.name]} (default: {default!r})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif typing.get_origin(kind) is list:
            parser.add_argument(flag, nargs="*", type=typing.get_args(kind)[0], help=help_text)
        else:
            parser.add_argument(flag, type=kind, help=help_text)
    return parser


def resolve(args: argparse.Namespace) -> Config:
    """defaults < --config file < flags, validated."""
    values = load_toml(args.config) if args.config else {}
    flags = {k: v for k, v in vars(args).items() if k != "config" and v is not None
             and k in {f.name for f in fields(Config)}}
    values.update(flags)
    return Config(**values).validate()


def from_dict(data: dict) -> Config:
    """A config saved in a checkpoint or a run folder (unknown keys are errors)."""
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"saved config has unknown keys {unknown}")
    # Checkpoints written before these keys existed: channels_last was a bool, and conv
    # fusions had BatchNorm at every tap.
    if isinstance(data.get("channels_last"), bool):
        data = {**data, "channels_last": "auto" if data["channels_last"] else "off"}
    data = {"fusion_bn": "on", **data}
    return Config(**data).validate()


def to_toml(config: Config) -> str:
    """The resolved config as TOML (flat keys; the format `load_toml` reads)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)
    return "".join(f"{k} = {value(v)}\n" for k, v in config.to_dict().items())
