"""Training policy: which parameters train and which BatchNorm statistics stay fixed. Applied
by training to a built model (`fusion.build.build_model`, the engine's staged fine-tuning), never
by the model's constructors, as timm's create_model builds and its training script freezes.

    hold_for_training(model, freeze="bn", partial_bn=False)
    freeze_until(model, "layer3")   # seed 002's staged fine-tuning, per epoch
"""
from __future__ import annotations

from torch import nn

from fusion.choices import FREEZE_MODES, resolve_name
from fusion.model import SingleStream, TwoStream, batchnorms, streams_of


def hold_for_training(model: SingleStream | TwoStream, *, freeze: str = "none",
                      partial_bn: bool = False) -> None:
    """freeze "streams": only the fusion module and the fused head train (the streams'
    BatchNorm statistics are held as well); "bn": the streams' BatchNorm statistics and affine
    parameters stay fixed (small batches; a fusion's own BatchNorm trains); partial_bn: TSN's,
    every BatchNorm but each stream's first keeps its statistics and affine parameters."""
    resolve_name(freeze, FREEZE_MODES, "freeze mode")
    streams = streams_of(model)
    if freeze == "streams" and isinstance(model, SingleStream):
        raise ValueError("freeze = 'streams' would leave a single stream nothing to train")
    held: list[nn.Module] = []
    if freeze == "streams":
        for stream in streams:
            for p in stream.parameters():
                p.requires_grad_(False)
            held += batchnorms(stream)
    elif freeze == "bn":
        # the backbones' BatchNorm only: a new fusion BatchNorm (mean 0, var 1) held fixed
        # would be a silent no-op
        held = [bn for stream in streams for bn in batchnorms(stream)]
    elif partial_bn:
        held = [bn for stream in streams for bn in batchnorms(stream)[1:]]
    model.hold_batchnorm(held)


def freeze_until(model: SingleStream | TwoStream, tap: str | None) -> None:
    """Staged fine-tuning (seed 002): freeze every stream's stages up to and including `tap`
    (their BatchNorm statistics too) and unfreeze the rest; None unfreezes all. The fusion
    module and the fused head always train. A stream without that tap stays trainable."""
    streams = streams_of(model)
    if tap is not None and not any(tap in s.taps for s in streams):
        raise ValueError(f"freeze_until {tap!r} is not a tap of "
                         f"{' or '.join(s.name for s in streams)}; valid: "
                         f"{', '.join(dict.fromkeys(t for s in streams for t in s.taps))}")
    held = []
    for stream in streams:
        cut = stream.taps.index(tap) + 1 if tap in stream.taps else 0
        for i, name in enumerate(stream.taps):
            for p in stream.stages[name].parameters():
                p.requires_grad_(i >= cut)
            if i < cut:
                held += batchnorms(stream.stages[name])
    model.hold_batchnorm(held)
