"""One Markdown table for a sweep: every run folder under DIR with a metrics.json.

    python scripts/summarize.py runs/ablate_fusion_type
"""
import argparse
import json
import sys
from pathlib import Path


def describe(metrics: dict) -> dict:
    config = metrics["config"]
    test = metrics["test"]

    def acc(name):
        return f"{100 * test[name]['accuracy']:.1f}" if name in test else "-"
    single = config["fuse"] == "none"
    return {
        "run": metrics["run"],
        "fusion": f"none ({config['stream']})" if single else config["fuse"],
        "tap": "-" if single else (config["at"] + (f" / {config['at_flow']}"
                                                   if config["at_flow"] else "")),
        "RGB %": acc("rgb"), "flow %": acc("flow"), "fused %": acc("fused"),
        "parameters": f"{metrics['parameters']:,}",
        "train time": f"{metrics['train_time_s'] / 60:.1f} min",
    }


def table(rows: list[dict]) -> str:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |",
             "|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|"]
    lines += ["| " + " | ".join(r[c].ljust(widths[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="folder holding run folders")
    args = parser.parse_args(argv)
    files = sorted(Path(args.sweep).glob("*/metrics.json"))
    if not files:
        print(f"error: no <run>/metrics.json under {args.sweep}", file=sys.stderr)
        return 1
    rows = []
    for path in files:
        try:
            rows.append(describe(json.loads(path.read_text())))
        except (ValueError, KeyError) as err:
            print(f"error: {path} is not a metrics file of this project ({err!r})",
                  file=sys.stderr)
            return 1
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
