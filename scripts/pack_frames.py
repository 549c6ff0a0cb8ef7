"""Pack a loose dataset root: one uncompressed tar per video holding its frame files byte for
byte, so the packed root has one file per video instead of hundreds, and trains the same.

    python scripts/pack_frames.py data/ucf101 data/ucf101_packed --workers 8
    python scripts/pack_frames.py data/ucf101 /scratch/ucf101 --workers 8 --shard 3/8 --verify
    python scripts/pack_frames.py data/mm data/mm_packed --layout rawframes --rawframes-dir rawframes

Layouts (--layout auto tells them apart): ucf101 (jpegs_256/ + tvl1_flow/{u,v,rgb}/: UCF101,
HMDB51, extract_frames.py's output) -> DST/packs/<video>.tar; folder (<class>/<video>/ with its
u/, v/, flow_rgb/) -> DST/packs/<class>/<video>.tar; rawframes (MMAction2's rawframes/<video
dir>/) -> DST/packs/<video dir>.tar. Split and list files, class files and extraction.json are
copied beside packs/, so DST is a complete dataset root: train with --data-root DST (the store
is detected; --frames packed insists).

A killed run continues where it stopped: finished packs are skipped, a pack is written as
<name>.tar.partial and renamed when complete, and one cut short is redone. --verify reads
every file of every pack (of this shard) back and compares its hash with the loose file's.
A pack is a standard tar: `tar -xf DST/packs/<video>.tar -C DIR --exclude=.pack-index` gives
the loose files back.
"""
import sys

from fusion.cli import ArgumentParser
from fusion.data.packing import PACK_LAYOUTS, pack_tree
from fusion.data.parallel import parse_shard


def main(argv=None) -> int:
    parser = ArgumentParser(__doc__)
    parser.add_argument("src", help="the loose dataset root")
    parser.add_argument("dst", help="the packed dataset root to write (outside src)")
    parser.add_argument("--layout", choices=PACK_LAYOUTS, default="auto",
                        help="the source's layout (auto: told apart from its folders)")
    parser.add_argument("--rawframes-dir", default="rawframes",
                        help="the frames folder of a rawframes root (MMAction2's data_prefix)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--shard", help="K/N: pack every N-th video from the K-th, so N "
                                        "machines (a job array) share one root")
    parser.add_argument("--verify", action="store_true",
                        help="compare every packed file's bytes with the loose file's (by hash)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        summary = pack_tree(args.src, args.dst, layout=args.layout, workers=args.workers,
                            shard=parse_shard(args.shard), verify=args.verify,
                            progress=not args.quiet, rawframes_dir=args.rawframes_dir)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary.report())
    return 1 if summary.failed or summary.mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
