"""Decode videos into RGB frames and quantised optical flow in the layout the datasets read.

    python scripts/extract_frames.py --videos UCF-101/ --out data/ucf101 --flow tvl1 --workers 8
    python scripts/extract_frames.py --videos my_videos/ --out data/own --layout folder --flow dis

--videos is searched recursively; a video's folder is its file name without the extension
(and, for --layout folder, its parent folder is its class). Finished videos are skipped, so an
interrupted run continues where it stopped; unreadable files, and files that decode clearly
fewer frames than their container declares (truncated downloads), are listed at the end.
"""
import argparse
import sys

from fusion.data.extract import LAYOUTS, extract_all
from fusion.data.flow import DEFAULT_BOUND, METHODS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
    parser.add_argument("--out", required=True, help="dataset root to write")
    parser.add_argument("--flow", choices=[*METHODS, "none"], default="tvl1")
    parser.add_argument("--bound", type=float, default=DEFAULT_BOUND,
                        help="flow clipped at +-bound pixels before 8-bit quantisation")
    parser.add_argument("--short-side", type=int, default=256, help="0 keeps the video size")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--ext", default="avi,mp4", help="comma-separated video extensions")
    parser.add_argument("--layout", choices=LAYOUTS, default="ucf101")
    parser.add_argument("--strict", action="store_true",
                        help="fail a video that decodes clearly fewer frames than its container "
                             "declares (a truncated file); without it the video is kept and "
                             "listed in the summary")
    args = parser.parse_args(argv)
    try:
        summary = extract_all(args.videos, args.out, extensions=tuple(args.ext.split(",")),
                              layout=args.layout, method=None if args.flow == "none" else args.flow,
                              bound=args.bound, short_side=args.short_side, workers=args.workers,
                              strict=args.strict)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
