"""One Markdown table for a sweep: every run folder under DIR with a metrics.json; and the same
as a plot, DIR/summary.png: fused / RGB / flow accuracy against the swept variable (fusion
layer in tower order, fusion type in registry order, schedule, ...) with the parameter count.

    python scripts/summarize.py runs/ablate_fusion_type
"""
import json
import sys
from pathlib import Path

from fusion.cli import ArgumentParser
from fusion.figures import save_png, summary_figure
from fusion.fusers import FUSIONS
from fusion.streams import build_stream

# The keys a sweep varies, in the order they name it (a fusion-type sweep also varies `at`:
# scores for averaging).
SWEPT = ("fuse", "at", "schedule", "stream")
IGNORED = ("run_name", "logdir", "resume", "workers", "device")


def swept_rows(metrics: list[dict]) -> tuple[str, list[dict]]:
    """(the swept variable, one plot row per run in that variable's natural order)."""
    configs = [m["config"] for m in metrics]
    varying = [k for k in configs[0] if k not in IGNORED
               and len({json.dumps(c.get(k)) for c in configs}) > 1]
    variable = next((k for k in SWEPT if k in varying), varying[0] if varying else "run")
    if len({json.dumps(c.get(variable)) for c in configs}) < len(configs):
        variable = "run"  # several keys vary (the demo: rgb, flow, conv1x1): runs by name

    def label(m):
        if variable == "fuse" and m["config"]["fuse"] == "none":
            return f"none ({m['config']['stream']})"
        return m["run"] if variable == "run" else str(m["config"][variable])
    if variable == "at":  # tower order of the RGB backbone
        taps = build_stream(configs[0]["rgb"], num_classes=2).taps
        order = {tap: i for i, tap in enumerate(taps)}
        metrics = sorted(metrics, key=lambda m: order.get(m["config"]["at"], len(order)))
    elif variable == "fuse":
        order = {name: i for i, name in enumerate(FUSIONS)}
        metrics = sorted(metrics, key=lambda m: order.get(m["config"]["fuse"], len(order)))
    else:
        metrics = sorted(metrics, key=label)

    def acc(m, name):  # a single stream's "fused" output is the stream's own: one bar
        own = name in m["test"] and not (name == "fused" and m["config"]["fuse"] == "none")
        return 100 * m["test"][name]["accuracy"] if own else None
    return variable, [{"label": label(m), "fused": acc(m, "fused"), "rgb": acc(m, "rgb"),
                       "flow": acc(m, "flow"), "parameters": m["parameters"]} for m in metrics]


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
    parser = ArgumentParser(__doc__)
    parser.add_argument("sweep", help="folder holding run folders")
    args = parser.parse_args(argv)
    return report(Path(args.sweep))


def report(sweep: Path, failed: dict[str, str] | None = None) -> int:
    """Print the table of every run folder under `sweep` with a metrics.json, and a row per
    `failed` run (name -> error line, in an error column); write summary.png of the finished
    runs. 1 when there is nothing to show or a metrics file is not this project's."""
    failed = failed or {}
    files = sorted(Path(sweep).glob("*/metrics.json"))
    if not files and not failed:
        print(f"error: no <run>/metrics.json under {sweep}", file=sys.stderr)
        return 1
    runs = []
    for path in files:
        try:
            runs.append(json.loads(path.read_text()))
            describe(runs[-1])
        except (ValueError, KeyError) as err:
            print(f"error: {path} is not a metrics file of this project ({err!r})",
                  file=sys.stderr)
            return 1
    rows = [describe(m) for m in runs]
    if failed:
        blank = dict.fromkeys(rows[0] if rows else ("run", "fusion", "tap", "RGB %", "flow %",
                                                    "fused %", "parameters", "train time"), "-")
        rows = sorted([{**row, "error": ""} for row in rows] +
                      [{**blank, "run": name, "error": error} for name, error in failed.items()],
                      key=lambda row: row["run"])
    print(table(rows))
    if runs:
        variable, plotted = swept_rows(runs)
        figure = summary_figure(plotted, variable=variable)
        out = Path(sweep) / "summary.png"
        save_png(figure, out)
        print(f"\nplot: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
