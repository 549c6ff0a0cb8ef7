"""Decode videos into RGB frames and quantised optical flow in the layout the datasets read.

    python scripts/extract_frames.py --videos UCF-101/ --out data/ucf101 --flow tvl1 --workers 8
    python scripts/extract_frames.py --videos my_videos/ --out data/own --layout folder --flow dis
    python scripts/extract_frames.py --videos UCF-101/ --out data/ucf101 --flow tvl1-torch \
        --device cuda --workers 8 --shard 3/8       # one GPU of a job array of 8
    python scripts/extract_frames.py --videos UCF-101/ --out data/ucf101 --store packed \
        --workers 8                     # a tar per video (data/ucf101/packs/), no frame files
    python scripts/extract_frames.py --videos hmdb51/ --out data/hmdb51 --flow raft \
        --flow-pairs spread-around-middle --flow-stack 8 --pad-square --short-side 224 \
        --flow-format rgb                                                         # seed 001

--videos is searched recursively; a video's folder is its file name without the extension
(and, for --layout folder, its parent folder is its class). Finished videos are skipped, so an
interrupted run continues where it stopped; unreadable files, and files that decode clearly
fewer frames than their container declares (truncated downloads), are listed at the end.
"""
import sys

from fusion.choices import FLOW_FORMATS
from fusion.cli import ArgumentParser
from fusion.data.extract import Execution, extract_all
from fusion.data.parallel import parse_shard
from fusion.data.jobs import LAYOUTS, STORES, Settings
from fusion.data.flow import DEFAULT_BOUND, METHODS, RAFT_MODELS
from fusion.data.sampling import FLOW_PAIRS


def parse(argv=None):
    parser = ArgumentParser(__doc__)
    parser.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
    parser.add_argument("--out", required=True, help="dataset root to write")
    parser.add_argument("--flow", choices=[*METHODS, "none"], default="tvl1",
                        help="optical flow method, or none for RGB frames only")
    parser.add_argument("--bound", type=float, default=DEFAULT_BOUND,
                        help="flow clipped at +-bound pixels before 8-bit quantisation")
    parser.add_argument("--short-side", type=int, default=256, help="0 keeps the video size")
    parser.add_argument("--pad-square", action="store_true",
                        help="zero-pad each frame to a square before resizing (seed 001)")
    parser.add_argument("--flow-pairs", choices=FLOW_PAIRS, default="consecutive",
                        help="flow between consecutive frames, or between the --flow-stack + 1 "
                             "frames spread around each video's middle (seed 001)")
    parser.add_argument("--flow-stack", type=int, default=8,
                        help="L of --flow-pairs spread-around-middle (an even number)")
    parser.add_argument("--flow-format", choices=FLOW_FORMATS, default="uv",
                        help="uv: u and v as 8-bit JPEGs clipped at --bound; rgb: each video's "
                             "float flow as colour PNGs on the video's one scale (seed 001's "
                             "flow_to_image), for training with flow_format = rgb")
    parser.add_argument("--raft-model", choices=RAFT_MODELS, default="large",
                        help="--flow raft: torchvision's raft_large or raft_small")
    parser.add_argument("--raft-weights", default="default",
                        help="'default' (torchvision's, downloaded once) or a local state-dict "
                             "file of the RAFT model")
    parser.add_argument("--device", default="auto",
                        help="where tvl1-torch and RAFT run: auto (a GPU if there is one) | cpu "
                             "| cuda | cuda:N")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="tvl1-torch / RAFT: frame pairs per device batch, across videos")
    parser.add_argument("--shard", help="K/N: extract every N-th video from the K-th, so N "
                                        "machines (a job array) share one extraction")
    parser.add_argument("--workers", type=int, default=1,
                        help="parallel processes (OpenCV methods) or decoding threads "
                             "(tvl1-torch, raft)")
    parser.add_argument("--ext", default="avi,mp4", help="comma-separated video extensions")
    parser.add_argument("--layout", choices=LAYOUTS, default="ucf101",
                        help="output layout: ucf101 (the released datasets') or folder (a "
                             "folder per class, from the videos' parent folders)")
    parser.add_argument("--store", choices=STORES, default="loose",
                        help="loose: a file per frame; packed: one tar per video under "
                             "<out>/packs/ (the same bytes; the datasets read either)")
    parser.add_argument("--strict", action="store_true",
                        help="fail a video that decodes clearly fewer frames than its container "
                             "declares (a truncated file); without it the video is kept and "
                             "listed in the summary")
    return parser.parse_args(argv)


def settings_of(args) -> Settings:
    """How the frames and flow are made (what extraction.json records)."""
    return Settings(
        flow_method=None if args.flow == "none" else args.flow, flow_bound=args.bound,
        short_side=args.short_side, pad_square=args.pad_square, flow_pairs=args.flow_pairs,
        flow_stack=args.flow_stack if args.flow_pairs != "consecutive" else 0,
        raft_model=args.raft_model, raft_weights=args.raft_weights,
        flow_format=args.flow_format)


def main(argv=None) -> int:
    args = parse(argv)
    try:
        execution = Execution(workers=args.workers, device=args.device,
                              batch_size=args.batch_size, shard=parse_shard(args.shard))
        summary = extract_all(args.videos, args.out, settings_of(args),
                              extensions=tuple(args.ext.split(",")), layout=args.layout,
                              strict=args.strict, store=args.store, execution=execution)
    except (ValueError, OSError, RuntimeError) as err:  # OSError: FileNotFoundError, a lock
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary.report())
    return 1 if summary.failed else 0  # a failed video is a failed run, whatever else worked


if __name__ == "__main__":
    sys.exit(main())
