"""Surgery on a classification model, by dotted module path: the input convolution replaced for
another number of input channels (cross-modality initialisation), and a module replaced. Shared
by the torchvision and timm streams and the torchvision export."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def set_module(module: nn.Module, path: str, new: nn.Module) -> None:
    """`module.get_submodule(path) = new`, which torch has no call for."""
    parent, _, leaf = path.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, leaf, new)


def replace_first_conv(model: nn.Module, path: str, in_channels: int,
                       init: Callable[[nn.Conv2d], None] | None = None) -> None:
    """Give the input convolution at `path` `in_channels`: with `init` None, its filters are
    averaged over the RGB channels and replicated over the new ones (cross-modality
    initialisation, TSN); else `init` initialises it afresh."""
    old = model.get_submodule(path)
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    old.dilation, old.groups, bias=old.bias is not None)
    if init is not None:
        init(new)
    else:
        with torch.no_grad():
            new.weight.copy_(old.weight.mean(dim=1, keepdim=True).expand_as(new.weight))
            if old.bias is not None:
                new.bias.copy_(old.bias)
    set_module(model, path, new)
