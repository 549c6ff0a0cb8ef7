"""Write the synthetic demo dataset in UCF101's layout (see fusion/data/synthetic.py).

    python scripts/make_synthetic.py --out data/synthetic [--classes 4] [--groups 6]
"""
import time

from fusion.cli import ArgumentParser
from fusion.data.synthetic import make_synthetic


def main(argv=None):
    parser = ArgumentParser(__doc__)
    parser.add_argument("--out", required=True, help="dataset root to create")
    parser.add_argument("--classes", type=int, default=4,
                        help="even: 2 colours x classes/2 directions")
    parser.add_argument("--groups", type=int, default=9, help="groups per class (>= 3)")
    parser.add_argument("--clips", type=int, default=3, help="clips per group")
    parser.add_argument("--height", type=int, default=72, help="frame height in pixels")
    parser.add_argument("--width", type=int, default=96, help="frame width in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated videos")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = make_synthetic(args.out, num_classes=args.classes, groups=args.groups,
                         clips_per_group=args.clips, height=args.height, width=args.width,
                         seed=args.seed)
    videos = args.classes * args.groups * args.clips
    print(f"wrote {videos} videos of {args.classes} classes to {out} "
          f"in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
