"""Print a stream's or a two-stream model's taps with their output shapes, and its parameters.

    python scripts/describe_model.py --stream resnet18 --in-channels 20 --num-classes 12
    python scripts/describe_model.py --rgb googlenet --flow resnet18 --fuse conv1x1 \\
        --at inception5b --flow-stack 12 --keep-spatial-head --num-classes 12
    python scripts/describe_model.py --stream timm:inception_v4 --image-size 299
"""

import torch

from fusion.cli import ArgumentParser
from fusion.fusers import FUSIONS
from fusion.parts import FusionSpec, StreamSpec, assemble
from fusion.streams import STREAMS, build_stream, count_parameters

BACKBONES = ", ".join(sorted(STREAMS)) + ", or timm:<any timm model>"


def describe_stream(stream, image_size: int, title: str = "tap") -> list[str]:
    x = torch.zeros(1, stream.in_channels, image_size, image_size)
    info = {i["name"]: i for i in stream.feature_info}
    rows = [f"{title:<16} {'output shape':<20} {'reduction':>9} {'parameters':>12}"]
    stream.eval()
    with torch.no_grad():
        for tap in stream.taps:
            x = stream.stages[tap](x)
            reduction = info[tap]["reduction"] if tap in info else "-"
            rows.append(f"{tap:<16} {str(tuple(x.shape[1:])):<20} {reduction:>9} "
                        f"{count_parameters(stream.stages[tap]):>12,}")
    return rows


def describe_two_stream(model, image_size: int, segments: int = 1) -> list[str]:
    rgb = torch.zeros(1, segments, model.rgb.in_channels, image_size, image_size)
    flow = torch.zeros(1, segments, model.flow.in_channels, image_size, image_size)
    rows = [f"rgb stream: {model.rgb.name}, {model.rgb.in_channels} channels "
            f"(fused at {model.at})"]
    rows += describe_stream(model.rgb, image_size, "rgb tap")
    rows += ["", f"flow stream: {model.flow.name}, {model.flow.in_channels} channels "
                 f"(fused at {model.at_flow})"]
    rows += describe_stream(model.flow, image_size, "flow tap")
    seen = {}

    def record(module, inputs, output):
        seen["in"], seen["out"] = [tuple(x.shape) for x in inputs], tuple(output.shape)
    model.eval()
    with torch.no_grad():
        if model.fusion.late:
            parts = model(rgb, flow, return_parts=True)
        else:
            handle = model.fusion.register_forward_hook(record)
            parts = model(rgb, flow, return_parts=True)
            handle.remove()
    if seen:  # shapes are B x T x C x H x W
        (_, _, *rgb_map), (_, _, *flow_map) = seen["in"]
        rows += ["", f"fusion {model.fusion.name}: rgb {tuple(rgb_map)} + flow {tuple(flow_map)} "
                     f"-> {tuple(seen['out'][2:])} per segment, {seen['out'][1]} segment(s)"]
    rows += ["", "outputs: " + ", ".join(f"{k} {tuple(v.shape[1:])}" for k, v in parts.items()),
             "", f"{'part':<16} {'parameters':>12}"]
    rows += [f"{name:<16} {count_parameters(part):>12,}" for name, part in model.parts().items()]
    rows.append(f"{'total':<16} {count_parameters(model):>12,}")
    return rows


def main(argv=None):
    parser = ArgumentParser(__doc__)
    parser.add_argument("--stream", help=f"describe one stream: {BACKBONES}")
    parser.add_argument("--in-channels", type=int, default=3,
                        help="one stream: 3 for one RGB frame, 2L for a stack of L flow frames")
    parser.add_argument("--modality", choices=["rgb", "flow"], default=None,
                        help="one stream: default rgb for 3 channels, flow otherwise")
    parser.add_argument("--rgb", help=f"two-stream: the RGB backbone ({BACKBONES})")
    parser.add_argument("--flow", help="two-stream: the flow backbone")
    parser.add_argument("--fuse", choices=sorted(FUSIONS), help="two-stream: the fusion function")
    parser.add_argument("--at", default=None, help="RGB tap to fuse at")
    parser.add_argument("--at-flow", default=None, help="flow tap (default: same reduction)")
    parser.add_argument("--flow-stack", type=int, default=10,
                        help="two-stream: L, flow frames per snippet")
    parser.add_argument("--rgb-stack", type=int, default=1,
                        help="two-stream: RGB frames per snippet")
    parser.add_argument("--segments", type=int, default=1, help="T: TSN segments per clip")
    parser.add_argument("--keep-spatial-head", action="store_true",
                        help="two-stream at the last tap: average in the RGB head")
    parser.add_argument("--keep-temporal-tower", action="store_true",
                        help="two-stream: run the flow tower on and average its scores in")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs")
    parser.add_argument("--image-size", type=int, default=224, help="input side in pixels")
    args = parser.parse_args(argv)
    if (args.stream is None) == (args.fuse is None):
        parser.error("give either --stream (one stream) or --rgb/--flow/--fuse (two streams)")
    if args.stream:
        try:
            stream = build_stream(args.stream, in_channels=args.in_channels,
                                  num_classes=args.num_classes, modality=args.modality)
        except ValueError as err:
            parser.error(str(err))
        print(f"{args.stream}: {stream.in_channels} x {args.image_size} x {args.image_size} "
              f"{stream.modality} input, {stream.num_classes} classes")
        rows = describe_stream(stream, args.image_size)
        rows.append(f"{'total':<16} {'':<20} {'':>9} {count_parameters(stream):>12,}")
    else:
        if not (args.rgb and args.flow):
            parser.error("--fuse needs --rgb and --flow")
        try:
            streams = [StreamSpec(name, modality, frames=frames).build(args.num_classes)
                       for name, modality, frames in ((args.rgb, "rgb", args.rgb_stack),
                                                      (args.flow, "flow", args.flow_stack))]
            model = assemble(*streams, FusionSpec(
                args.fuse, at=args.at, at_flow=args.at_flow,
                keep_spatial_head=args.keep_spatial_head,
                keep_temporal_tower=args.keep_temporal_tower), num_classes=args.num_classes)
        except ValueError as err:
            parser.error(str(err))
        rows = describe_two_stream(model, args.image_size, args.segments)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
