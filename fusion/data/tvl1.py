"""Dual TV-L1 optical flow in PyTorch, batched over frame pairs, on the CPU or a GPU.

    flow = tvl1(first, second)   # B x H x W grey levels in [0, 255] (float) -> B x 2 x H x W px

The method is Zach, Pock & Bischof's duality-based TV-L1 (DAGM 2007) as Sanchez,
Meinhardt-Llopis & Facciolo describe it (IPOL 2013) and as OpenCV's DualTVL1OpticalFlow
implements it, whose defaults `TVL1Params` holds (tests read them back from OpenCV's getters).
Details followed, each as OpenCV does it:
- pyramid: each level is the previous one resized by `scale_step` (bilinear, edge-replicated,
  no pre-smoothing, side round(0.8 W)), levels under 16 px dropped; the flow starts at zero on
  the coarsest level and is carried down by a bilinear resize to the finer size and 1 /
  `scale_step`;
- per level: the dual variables start at zero; `warps` times, the second image and its centred
  gradient (edge-replicated differences) are warped by the current flow (bicubic, Keys
  a = -0.75, zero outside the image) and the linearised
  data term is rebuilt; then up to
  `outer` rounds of a 5 x 5 median filter of the flow (edge-replicated) followed by up to
  `inner` primal-dual steps: the thresholding step (TH) for v, u = v + theta div p (backward
  differences), p = (p + tau / theta grad u) / (1 + tau / theta |grad u|) (forward differences,
  zero on the last row / column);
- stopping: a pair stops iterating within a warp once the sum over pixels of the squared change
  of u in one step is at most epsilon^2 x pixels.
Pairs of a batch stop independently (a stopped pair keeps its flow while others iterate), so a
batch gives each pair the flow it would get alone. Known departures from OpenCV: it sums the
stopping error in float32 serially (here by a reduction) and tabulates its cubic weights, so
single pixels can differ slightly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TVL1Params:
    """OpenCV's DualTVL1OpticalFlow defaults (its getters: Tau, Lambda, Theta, ScalesNumber,
    WarpingsNumber, Epsilon, InnerIterations, OuterIterations, ScaleStep, MedianFiltering;
    Gamma 0, no initial flow)."""

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    scales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner: int = 30
    outer: int = 10
    scale_step: float = 0.8
    median: int = 5


MIN_SIDE = 16  # OpenCV drops pyramid levels smaller than this


def _coordinates(h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return xs, ys


def _cubic_weights(t: torch.Tensor) -> list[torch.Tensor]:
    """Keys' cubic (a = -0.75, OpenCV's and PyTorch's) for the taps at -1, 0, 1, 2 of a sample
    at fraction t in [0, 1)."""
    a = -0.75
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    return [w0, w1, w2, 1 - w0 - w1 - w2]


def remap_cubic(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """x (B x C x H x W) at pixel positions (xs, ys) (B x H x W), bicubic, zero outside the
    image, as OpenCV's remap with float maps: a sample at a whole pixel is that pixel exactly
    (grid_sample's normalised coordinates would move it by rounding, and TV-L1's data term
    turns such noise into flow where the image is flat)."""
    b, c, h, w = x.shape
    pad = 4
    flat = F.pad(x, (pad, pad, pad, pad)).reshape(b, c, -1)
    width = w + 2 * pad
    x0, y0 = torch.floor(xs), torch.floor(ys)
    wx, wy = _cubic_weights(xs - x0), _cubic_weights(ys - y0)
    # beyond the image every tap reads the zero padding
    x0 = x0.clamp(-3, w + 1).long() + pad
    y0 = y0.clamp(-3, h + 1).long() + pad
    out = torch.zeros_like(x)
    for i in range(4):
        row = ((y0 + i - 1) * width).reshape(b, 1, -1)
        for j in range(4):
            index = (row + (x0 + j - 1).reshape(b, 1, -1)).expand(b, c, -1)
            taps = flat.gather(2, index).reshape(b, c, h, w)
            out += (wy[i] * wx[j]).unsqueeze(1) * taps
    return out


def resize(x: torch.Tensor, size: tuple[int, int], scale: tuple[float, float]) -> torch.Tensor:
    """OpenCV's INTER_LINEAR resize of B x C x H x W to `size`, source pixel (d + 0.5) / scale
    - 0.5 per axis, edges replicated."""
    h, w = x.shape[-2:]
    xs, ys = _coordinates(*size, x.device)
    # grid_sample's normalised coordinates with align_corners: -1 and 1 are the edge pixels
    xs = ((xs + 0.5) / scale[1] - 0.5) * (2.0 / max(w - 1, 1)) - 1.0
    ys = ((ys + 0.5) / scale[0] - 0.5) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack((xs, ys), -1).expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def centred_gradient(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return (0.5 * (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]),
            0.5 * (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]))


def forward_gradient(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1, 0, 0))
    dy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    return dx, dy


def divergence(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Backward differences, the adjoint of `forward_gradient` (p is zero beyond the image)."""
    return (p1 - F.pad(p1[..., :, :-1], (1, 0, 0, 0))) + (p2 - F.pad(p2[..., :-1, :], (0, 0, 1, 0)))


def median_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """size x size median of B x C x H x W, edges replicated (OpenCV's medianBlur)."""
    r = size // 2
    padded = F.pad(x, (r, r, r, r), mode="replicate")
    windows = padded.unfold(-2, size, 1).unfold(-2, size, 1)  # B C H W k k
    return windows.reshape(*x.shape, size * size).median(dim=-1).values


def _step(u, p, data: tuple[torch.Tensor, ...], active, l_t: float, theta: float,
          taut: float, threshold: torch.Tensor):
    """One primal-dual iteration for every pair; pairs not `active` keep their state.
    u: B x 2 x H x W, p: B x 4 x H x W (p11, p12, p21, p22); active: B x 1 x 1 x 1.
    data: the data term linearised at the current warp, fixed through its iterations: the
    warped second image's gradient wx, wy, grad = wx^2 + wy^2 and the residual's constant
    part rho_c (one tuple, which torch.compile takes as its four tensors)."""
    wx, wy, grad, rho_c = data
    u1, u2 = u[:, 0:1], u[:, 1:2]
    rho = rho_c + wx * u1 + wy * u2
    lg = l_t * grad
    # the thresholding step TH (Zach et al., eq. 11)
    fi = torch.where(grad > torch.finfo(torch.float32).eps, -rho / grad.clamp_min(1e-30),
                     torch.zeros_like(rho))
    scale = torch.where(rho < -lg, torch.full_like(rho, l_t),
                        torch.where(rho > lg, torch.full_like(rho, -l_t), fi))
    v1, v2 = u1 + scale * wx, u2 + scale * wy
    new1 = v1 + theta * divergence(p[:, 0:1], p[:, 1:2])
    new2 = v2 + theta * divergence(p[:, 2:3], p[:, 3:4])
    error = ((new1 - u1) ** 2 + (new2 - u2) ** 2).sum(dim=(1, 2, 3))
    u1x, u1y = forward_gradient(new1)
    u2x, u2y = forward_gradient(new2)
    ng1 = 1.0 + taut * torch.sqrt(u1x * u1x + u1y * u1y)
    ng2 = 1.0 + taut * torch.sqrt(u2x * u2x + u2y * u2y)
    new_p = torch.cat(((p[:, 0:1] + taut * u1x) / ng1, (p[:, 1:2] + taut * u1y) / ng1,
                       (p[:, 2:3] + taut * u2x) / ng2, (p[:, 3:4] + taut * u2y) / ng2), 1)
    u = torch.where(active, torch.cat((new1, new2), 1), u)
    p = torch.where(active, new_p, p)
    active = active & (error > threshold).view(-1, 1, 1, 1)
    return u, p, active


_compiled_step = None


def _stepper(compile: bool):
    global _compiled_step
    if not compile:
        return _step
    if _compiled_step is None:
        _compiled_step = torch.compile(_step, dynamic=True)
    return _compiled_step


def _one_scale(i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor, params: TVL1Params,
               step) -> torch.Tensor:
    b, _, h, w = i0.shape
    threshold = torch.tensor(params.epsilon ** 2 * h * w, device=i0.device)
    l_t = params.lambda_ * params.theta
    taut = params.tau / params.theta
    i1x, i1y = centred_gradient(i1)
    target = torch.cat((i1, i1x, i1y), 1)
    xs, ys = _coordinates(h, w, i0.device)
    p = torch.zeros(b, 4, h, w, device=i0.device)
    for _ in range(params.warps):
        warped = remap_cubic(target, xs + u[:, 0], ys + u[:, 1])
        w1, wx, wy = warped[:, 0:1], warped[:, 1:2], warped[:, 2:3]
        grad = wx * wx + wy * wy
        rho_c = w1 - wx * u[:, 0:1] - wy * u[:, 1:2] - i0
        active = torch.ones(b, dtype=torch.bool, device=i0.device)
        for _ in range(params.outer):
            # only the pairs still iterating are computed: a batch costs what its pairs need,
            # not what its slowest pair needs
            chosen = active.nonzero().squeeze(1)
            if chosen.numel() == 0:
                break
            every = chosen.numel() == b
            pick = (lambda t: t) if every else (lambda t: t.index_select(0, chosen))
            us, ps = pick(u), pick(p)
            data = tuple(pick(t) for t in (wx, wy, grad, rho_c))
            if params.median > 1:
                us = median_filter(us, params.median)
            still = torch.ones(chosen.numel(), 1, 1, 1, dtype=torch.bool, device=i0.device)
            for _ in range(params.inner):
                us, ps, still = step(us, ps, data, still, l_t, params.theta, taut, threshold)
            if every:
                u, p = us, ps
            else:
                u, p = u.index_copy(0, chosen, us), p.index_copy(0, chosen, ps)
            active = active.index_copy(0, chosen, still.view(-1))
    return u


@torch.no_grad()
def tvl1(first: torch.Tensor, second: torch.Tensor, params: TVL1Params = TVL1Params(), *,
         compile: bool = False) -> torch.Tensor:
    """Flow from `first` to `second` (B x H x W grey levels, 0..255) -> B x 2 x H x W (u, v) in
    pixels, float32, on their device. `compile` runs the iteration through torch.compile."""
    if first.shape != second.shape or first.dim() != 3:
        raise ValueError(f"tvl1 takes two B x H x W batches of one size, got "
                         f"{tuple(first.shape)} and {tuple(second.shape)}")
    step = _stepper(compile)
    levels = [torch.stack((first, second), 1).float()]  # B x 2 x H x W: both images at once
    for _ in range(1, params.scales):
        h, w = levels[-1].shape[-2:]
        size = (round(h * params.scale_step), round(w * params.scale_step))
        if min(size) < MIN_SIDE:
            break
        levels.append(resize(levels[-1], size, (params.scale_step, params.scale_step)))
    u = torch.zeros(first.shape[0], 2, *levels[-1].shape[-2:], device=first.device)
    for s in range(len(levels) - 1, -1, -1):
        u = _one_scale(levels[s][:, 0:1], levels[s][:, 1:2], u, params, step)
        if s:
            h, w = levels[s - 1].shape[-2:]
            u = resize(u, (h, w), (h / u.shape[-2], w / u.shape[-1])) / params.scale_step
    return u
