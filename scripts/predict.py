"""Label the moments of an action in new videos with a trained checkpoint.

    python scripts/predict.py --checkpoint runs/x/best.pt VIDEO [VIDEO ...]
        [--window 2.0] [--stride 1.0] [--json predictions.json] [--device auto]
    python scripts/predict.py --onnx model.onnx VIDEO ...   # onnxruntime, no torch model


Flow is computed on the fly with the method the model was trained on (its config's
flow_method); prints one line per window (start, end, top class, probability) and the
video-level prediction (the mean of the windows' softmax). A video that cannot be read is
reported and skipped: the others are still predicted and written to --json, the failures are
listed at the end, and the exit status is 1. A video shorter than one clip (fewer frames than a
flow stack spans) is filled by looping its frames, which its line says; --strict refuses it.
"""
import json
import sys

from fusion.cli import ArgumentParser
from fusion.data.video import VideoError
from fusion.distributed import device_for
from fusion.predict import load_for_prediction, predict_video


def main(argv=None) -> int:
    parser = ArgumentParser(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a training checkpoint (best.pt)")
    source.add_argument("--onnx", help="a model written by scripts/export.py --onnx")
    parser.add_argument("videos", nargs="+", help="video files to label")
    parser.add_argument("--window", type=float, default=2.0, help="seconds per window")
    parser.add_argument("--stride", type=float, default=1.0, help="seconds between windows")
    parser.add_argument("--json", help="write the predictions of every readable video to this "
                                       "file (also when others fail)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--strict", action="store_true",
                        help="refuse a video shorter than one clip instead of looping its frames "
                             "to fill the clip")
    args = parser.parse_args(argv)
    try:
        if args.onnx:
            from fusion.export import OnnxModel

            model = OnnxModel(args.onnx)
            config, classes, device = model.config, model.classes, "cpu"
        else:
            model, config, classes = load_for_prediction(args.checkpoint)
            device = device_for(args.device)
            model.to(device)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    # One unreadable video costs its own predictions only: the others are printed and written.
    reports, failures = [], []
    for video in args.videos:
        try:
            report = predict_video(model, config, classes, video, window=args.window,
                                   stride=args.stride, device=device, strict=args.strict)
        except (VideoError, ValueError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            failures.append((video, err))
            continue
        reports.append(report)
        print_report(video, report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=1)
    if failures:
        print(f"\n{len(failures)} of {len(args.videos)} videos failed"
              + (f" ({len(reports)} written to {args.json})" if args.json else "") + ":",
              file=sys.stderr)
        for video, err in failures:
            print(f"  {video}: {err}", file=sys.stderr)
        return 1
    return 0


def print_report(video: str, report: dict) -> None:
    print(f"{video}: {report['frames']} frames at {report['fps']:g} fps "
          f"({report['duration']:.1f} s)" + (f"; {report['note']}" if report["note"] else ""))
    print(f"  {'start':>7} {'end':>7}  {'class':<20} probability")
    for w in report["windows"]:
        print(f"  {w['start']:>7.2f} {w['end']:>7.2f}  {w['label']:<20} {w['probability']:.3f}")
    p = report["prediction"]
    print(f"  video: {p['label']} ({p['probability']:.3f})")


if __name__ == "__main__":
    sys.exit(main())
