"""Print a stream's taps with their output shapes at a given input size, and its parameters.

    python scripts/describe_model.py --stream resnet18 --in-channels 20 --num-classes 12
"""
import argparse

import torch

from fusion.streams import STREAMS, build_stream, count_parameters


def describe_stream(stream, image_size: int) -> str:
    x = torch.zeros(1, stream.in_channels, image_size, image_size)
    info = {i["name"]: i for i in stream.feature_info}
    rows = [f"{'tap':<13} {'output shape':<20} {'reduction':>9} {'parameters':>12}"]
    stream.eval()
    with torch.no_grad():
        for tap in stream.taps:
            x = stream.stages[tap](x)
            reduction = info[tap]["reduction"] if tap in info else "-"
            rows.append(f"{tap:<13} {str(tuple(x.shape[1:])):<20} {reduction:>9} "
                        f"{count_parameters(stream.stages[tap]):>12,}")
    rows.append(f"{'total':<13} {'':<20} {'':>9} {count_parameters(stream):>12,}")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stream", required=True, choices=sorted(STREAMS))
    parser.add_argument("--in-channels", type=int, default=3,
                        help="3 for one RGB frame, 2L for a stack of L flow frames")
    parser.add_argument("--modality", choices=["rgb", "flow"], default=None,
                        help="default: rgb for 3 channels, flow otherwise")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args(argv)
    stream = build_stream(args.stream, in_channels=args.in_channels,
                          num_classes=args.num_classes, modality=args.modality)
    print(f"{args.stream}: {stream.in_channels} x {args.image_size} x {args.image_size} "
          f"{stream.modality} input, {stream.num_classes} classes")
    print(describe_stream(stream, args.image_size))


if __name__ == "__main__":
    main()
