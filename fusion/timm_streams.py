"""Streams from timm (PyTorch Image Models): any timm model name, spelled `timm:<name>`.

    stream = build_stream("timm:inception_v4", in_channels=20, num_classes=101, modality="flow")
    stream.taps   # timm's feature_info modules: features_2 (features.2), ..., features_21, scores

The model's top-level modules, with a top-level Sequential that holds a feature map opened one
level (as timm's own FeatureListNet does), are grouped into stages that end at the modules timm's `feature_info`
names, so `forward_to` / `forward_from` run the same modules in the same order as timm's
`features_only` model. The `scores` stage runs whatever `forward_features` does after the last
feature map (found by running it once), then the model's own `forward_head`. The build checks
the staged forward against the model's forward once; a model whose forward is not a sequence of
its modules (timm serves those features through hooks) is refused by name.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import torch
from torch import nn

from fusion.files import check_state_dict, read_state_dict
from fusion.surgery import replace_first_conv

PREFIX = "timm:"
CHECK_SIZE = 160  # input side of the build-time check (Inception's stems need > 96 px)


def is_timm(name: str) -> bool:
    return name.startswith(PREFIX)


def _timm():
    try:
        import timm
    except ImportError:
        raise RuntimeError("timm streams need timm: pip install timm") from None
    return timm


def check_name(name: str) -> str:
    """The timm model name of `timm:<name>`, or an error saying how to find valid ones."""
    timm = _timm()
    model = name[len(PREFIX):]
    if not timm.is_model(model):
        close = difflib.get_close_matches(model, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Close: {', '.join(close)}." if close else ""
        raise ValueError(f"unknown timm model {model!r} (from {name!r}).{hint} List them with "
                         f"python -c \"import timm; print(timm.list_models('*{model[:5]}*'))\" "
                         f"and spell one timm:<name>")
    return model


class TimmHead(nn.Module):
    """The `scores` stage: the modules `forward_features` runs after the last feature map, in
    order, then the model's `forward_head` (pooling, dropout, classifier). The head's modules
    are registered here; `forward_head` is the model's bound method over those same modules."""

    def __init__(self, tail: list[tuple[str, nn.Module]], head: list[tuple[str, nn.Module]],
                 forward_head):
        super().__init__()
        self.tail = nn.ModuleDict(tail)
        self.head = nn.ModuleDict(head)
        object.__setattr__(self, "_forward_head", forward_head)  # not a second registration

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.tail.values():
            x = module(x)
        return self._forward_head(x)


def _flat_modules(model: nn.Module, taps: list[str]) -> list[tuple[str, nn.Module]]:
    """Top-level children in order; a Sequential child that holds a tap (`features.2`) is opened
    into its children, named with dots, as timm's FeatureListNet opens it."""
    opened = {tap.split(".")[0] for tap in taps if "." in tap}
    modules = []
    for name, child in model.named_children():
        if name in opened and isinstance(child, nn.Sequential):
            modules += [(f"{name}.{sub}", m) for sub, m in child.named_children()]
        else:
            modules.append((name, child))
    return modules


def _create(timm, model_name: str, weights, in_channels: int, num_classes: int,
            dropout: float) -> nn.Module:
    if weights is None:
        return timm.create_model(model_name, pretrained=False, num_classes=num_classes,
                                 in_chans=in_channels, drop_rate=dropout)
    if str(weights) == "imagenet":
        try:
            model = timm.create_model(model_name, pretrained=True, drop_rate=dropout)
        except Exception as err:  # hub and network errors come in many types
            cfg = timm.models.get_pretrained_cfg(model_name)
            where = (cfg.hf_hub_id and f"https://huggingface.co/{cfg.hf_hub_id}") or cfg.url
            raise RuntimeError(
                f"could not download timm's pretrained weights for {model_name} from {where} "
                f"({type(err).__name__}: {str(err)[:200]}). Without network access, download "
                f"the weights file (model.safetensors or a .pth state dict) elsewhere and pass "
                f"its path instead: weights='/path/to/file'") from err
    else:
        model = timm.create_model(model_name, pretrained=False, drop_rate=dropout)
        state = read_state_dict(weights, "weights file")
        check_state_dict(model.state_dict(), state,
                         f"cannot load weights file {weights} into timm's {model_name}")
        model.load_state_dict(state)
    if num_classes != model.num_classes:  # only the classifier: the video classes are not ImageNet's
        model.reset_classifier(num_classes)
    if in_channels != 3:
        replace_first_conv(model, model.pretrained_cfg["first_conv"], in_channels)
    return model


def timm_stages(name: str, *, in_channels: int, num_classes: int, weights: str | Path | None,
                dropout: float):
    """(stages, feature_info, RGB mean, RGB std) of timm model `timm:<name>`; see the module
    docstring. `weights`: None (timm's random init), "imagenet" (timm's pretrained weights,
    downloaded) or a local state-dict file (.pth or .safetensors) with timm's keys."""
    timm = _timm()
    model_name = check_name(name)
    model = _create(timm, model_name, weights, in_channels, num_classes, dropout)
    taps = [info["module"] for info in model.feature_info]
    flat = _flat_modules(model, taps)
    names = [n for n, _ in flat]
    positions = []
    for tap in taps:
        if tap not in names:
            raise ValueError(f"timm's {model_name} serves its feature maps through hooks "
                             f"({tap} is not one of its top-level modules), so it cannot run as "
                             f"a staged stream; pick another timm model")
        positions.append(names.index(tap))
    stages, start = [], 0
    for tap, end in zip(taps, positions):  # a stage name cannot hold a dot: features_2
        stages.append((tap.replace(".", "_"), nn.Sequential(*[m for _, m in flat[start:end + 1]])))
        start = end + 1
    x = torch.randn(2, in_channels, CHECK_SIZE, CHECK_SIZE,
                    generator=torch.Generator().manual_seed(0))
    tail, head, expected = _split_tail(model, flat[start:], x)
    stages.append(("scores", TimmHead(tail, head, model.forward_head)))
    _check_staged(stages, x, expected, model_name)
    model.train()
    feature_info = [{"name": tap.replace(".", "_"), "channels": info["num_chs"],
                     "reduction": info["reduction"]} for tap, info in zip(taps, model.feature_info)]
    cfg = model.pretrained_cfg
    return stages, feature_info, tuple(cfg["mean"]), tuple(cfg["std"])


def _split_tail(model, rest, x: torch.Tensor):
    """Which of the modules after the last feature map `forward_features` runs (in the order
    it runs them; the others belong to `forward_head`), and the model's output on `x` (timm's
    forward is forward_head(forward_features(x))), from one run."""
    ran: list[str] = []
    hooks = [m.register_forward_hook(lambda *_, n=n: ran.append(n)) for n, m in rest]
    try:
        with torch.no_grad():
            model.eval()
            features = model.forward_features(x)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        expected = model.forward_head(features)
    modules = dict(rest)
    tail = [(n.replace(".", "_"), modules[n]) for n in dict.fromkeys(ran)]
    head = [(n.replace(".", "_"), m) for n, m in rest if n not in ran]
    return tail, head, expected


def _check_staged(stages, x: torch.Tensor, expected: torch.Tensor, model_name: str) -> None:
    with torch.no_grad():
        for _, stage in stages:
            x = stage(x)
    if not torch.allclose(x, expected, rtol=1e-4, atol=1e-4):
        raise ValueError(f"timm's {model_name}: running its modules in order does not give its "
                         f"forward (its forward does more than a sequence of modules), so it "
                         f"cannot run as a staged stream; pick another timm model")
