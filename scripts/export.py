"""Hand a trained model to the tools it is deployed with.

    python scripts/export.py --checkpoint runs/x/best.pt --onnx model.onnx
    python scripts/export.py --checkpoint runs/x/best.pt --torchvision exported/

--onnx: the whole model (one stream, two streams at any fusion, three streams) taking the uint8
frames the datasets produce, normalisation inside, dynamic batch, logits out; it is run once in
onnxruntime against PyTorch (the largest difference is printed; over 1e-3 is an error). Then
`python scripts/predict.py --onnx model.onnx VIDEO` predicts with onnxruntime alone.
--torchvision: each stream that runs to its own classifier as a torchvision state dict, with a
JSON beside it (builder, class count, input channels, normalisation).
Needs the export extra: pip install -e .[export]
"""
import sys

from fusion.cli import ArgumentParser
from fusion.checkpoint import load_checkpoint
from fusion.build import model_from_checkpoint
from fusion.config import from_dict


def main(argv=None) -> int:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="a run's best.pt or last.pt")
    parser.add_argument("--onnx", help="write the whole model as this ONNX file")
    parser.add_argument("--torchvision", help="write each complete stream into this folder")
    args = parser.parse_args(argv)
    if not args.onnx and not args.torchvision:
        parser.error("give --onnx FILE and/or --torchvision DIR")
    try:
        from fusion.export import ExportError, export_onnx, export_torchvision
    except ImportError as err:
        print(f"error: {err}; install the export extra: pip install -e .[export]",
              file=sys.stderr)
        return 1
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        model = model_from_checkpoint(checkpoint)
        if args.onnx:
            difference = export_onnx(model, from_dict(checkpoint["config"]),
                                     checkpoint["classes"], args.onnx)
            print(f"wrote {args.onnx}; onnxruntime vs PyTorch on random inputs: max |difference| "
                  f"{difference:.2e}")
        if args.torchvision:
            for role, path in export_torchvision(model, args.torchvision).items():
                print(f"wrote {path} ({role} stream) and {path.with_suffix('.json').name}")
    except (ExportError, ImportError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
