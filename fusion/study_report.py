"""A study's report: DIR/report.md (per split, mean +- std over splits and seeds, the published
number beside ours with its source and the difference, then where every number came from),
DIR/report.json (the same numbers for scripts) and DIR/report.png (ours against published)."""
from __future__ import annotations

import json
import shlex
import statistics
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fusion.figures import save_png
from fusion.files import write_atomic
from fusion.recipes import ROOT, Recipe
from fusion.study import Result, commit


def accuracy(result: Result, output: str) -> float | None:
    """Test video accuracy (%) of one output of a finished stage; None when it did not
    finish or has no such output."""
    metrics = result.metrics if result.status in ("done", "trained", "resumed") else None
    if not metrics or output not in metrics["test"]:
        return None
    return 100 * metrics["test"][output]["accuracy"]


def table(recipe: Recipe, results: list[Result]) -> list[dict]:
    """One entry per row of the recipe: its value per cell, mean, std, published, difference."""
    by_key = {(r.cell, r.stage.name): r for r in results}
    cells = list(dict.fromkeys(r.cell for r in results))
    rows = []
    for row in recipe.rows:
        values = {cell.name: accuracy(by_key[cell, row.stage], row.output) for cell in cells}
        known = [v for v in values.values() if v is not None]
        mean = statistics.fmean(known) if known else None
        std = statistics.stdev(known) if len(known) > 1 else None
        errors = {cell.name: by_key[cell, row.stage].error or
                  (f"no output {row.output!r} in its metrics" if by_key[cell, row.stage].metrics
                   else "not run") for cell in cells if values[cell.name] is None}
        states = {cell.name: by_key[cell, row.stage].status for cell in cells}
        rows.append({"name": row.name, "stage": row.stage, "output": row.output,
                     "values": values, "mean": mean, "std": std, "runs": len(known),
                     "published": row.published, "source": row.source, "errors": errors,
                     "states": states,
                     "protocol": protocol_text([by_key[cell, row.stage] for cell in cells]),
                     "difference": None if mean is None or row.published is None
                     else mean - row.published})
    return rows


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def published_text(value: float | None) -> str:
    """A published number as the report printed it (96.01 stays 96.01)."""
    return "-" if value is None else f"{value:g}"


def protocol_text(results: list[Result]) -> str:
    """How a row's stage tested: clips x crops, aggregation (one text when every cell agrees)."""
    seen = []
    for result in results:
        protocol = (result.metrics or {}).get("protocol") if result.status in (
            "done", "trained", "resumed") else None
        if protocol:
            seen.append(f"{protocol['clips']} x {protocol['crops']}, {protocol['aggregate']}")
    return " / ".join(dict.fromkeys(seen)) or "-"


def split_columns(results: list[Result]) -> dict[str, list[str]]:
    """Report columns: a split (its seeds' mean) or, without splits, each seed."""
    columns: dict[str, list[str]] = {}
    for cell in dict.fromkeys(r.cell for r in results):
        key = f"split {cell.split}" if cell.split is not None else f"seed {cell.seed}"
        columns.setdefault(key, []).append(cell.name)
    return columns


def markdown(recipe: Recipe, results: list[Result], rows: list[dict], *, quick: bool,
             command: str) -> str:
    columns = split_columns(results)
    seeds = sorted({r.cell.seed for r in results})
    lines = [f"# {recipe.title}", "", recipe.report, ""]
    if quick:
        lines += ["**Quick run**: toy size on the synthetic data (`--quick`), to test the "
                  "recipe's plumbing; its numbers say nothing about the report's.", ""]
    path = recipe.path.relative_to(ROOT) if recipe.path.is_relative_to(ROOT) else recipe.path
    lines += [f"Recipe `{recipe.name}` ({path}), run as `{command}`; seeds {', '.join(map(str, seeds))}. Test video accuracy "
              f"(top-1, %); mean +- standard deviation over every split and seed "
              f"(n runs).", ""]
    ran = sorted({r.cell.split for r in results if r.cell.split is not None})
    if recipe.splits and ran != sorted(recipe.splits):
        lines += [f"**Splits**: this study ran split {', '.join(map(str, ran))}; the published "
                  f"numbers are for split {', '.join(map(str, recipe.splits))} (their mean "
                  f"where several): compare with care.", ""]
    header = ["", *columns, "mean +- std (n)", "published", "ours - published", "test protocol",
              "source"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = []
        for names in columns.values():
            known = [row["values"][n] for n in names if row["values"][n] is not None]
            states = [row["states"][n] for n in names]
            cells.append(_number(statistics.fmean(known)) if known else "failed"
                         if "failed" in states else "blocked" if "blocked" in states else "-")
        spread = f" +- {row['std']:.1f}" if row["std"] is not None else ""
        lines.append("| " + " | ".join([
            row["name"], *cells, f"{_number(row['mean'])}{spread} ({row['runs']})",
            published_text(row["published"]), _number(row["difference"], signed=True),
            row["protocol"], row["source"]]) + " |")
    if recipe.departures:
        lines += ["", "## Where this recipe departs from the report", ""]
        lines += [f"- {d}" for d in recipe.departures]
    if any(row["errors"] for row in rows):
        lines += ["", "## Missing numbers", ""]
        for row in rows:
            for cell, error in row["errors"].items():
                lines.append(f"- {row['name']}, {cell}: {row['states'][cell] or 'not run'}: "
                             f"{error}")
    commits = sorted({r.state.get("commit", "?") for r in results if r.state})
    lines += ["", "## Provenance", "", f"- code: {', '.join(commits) or '-'} (each stage's "
              f"commit when it started, below); this report written at {commit()}"]
    lines += provenance(results)
    return "\n".join(lines) + "\n"


def provenance(results: list[Result]) -> list[str]:
    """Per stage and cell: its folder, what it ran, the checkpoint it tested and how the
    frames were made."""
    lines = []
    for result in results:
        state = result.state
        metrics = result.metrics or {}
        where = f"- `{result.cell.name}/{result.stage.name}` ({result.status or 'not run'}): " \
                f"`{result.folder}`"
        if state.get("commit"):
            where += f"; commit {state['commit']}"
        if result.stage.kind == "train":
            config = state.get("config", {})
            where += (f"; flow {config.get('flow_method')} ({config.get('flow_format')}), "
                      f"short side {config.get('short_side')}; extraction.json when it "
                      f"started: {extraction_note(state, config.get('data_root'))}")
        if state:
            where += f"; ran `{state['script']} {shlex.join(state['argv'])}`"
        if metrics:
            where += f"; tested `{metrics.get('checkpoint')}`"
        lines.append(where)
    return lines


def extraction_note(state: dict, data_root: str | None) -> str:
    if state.get("extraction"):
        return json.dumps(state["extraction"], sort_keys=True)
    return f"none ({data_root} has no extraction.json: how its frames were made is not " \
           f"recorded)"


def figure(recipe: Recipe, rows: list[dict], *, quick: bool) -> Figure:
    """Ours (mean, std as error bar) beside the published number, per row."""
    fig = Figure(figsize=(max(6.0, 1.5 * len(rows) + 2), 4.5))
    axes = fig.add_subplot()
    x = np.arange(len(rows))
    ours = [row["mean"] or 0.0 for row in rows]
    errors = [row["std"] or 0.0 for row in rows]
    bars = axes.bar(x - 0.2, ours, 0.4, yerr=errors, capsize=3, color="tab:blue", label="ours")
    axes.bar_label(bars, labels=[_number(row["mean"]) for row in rows], fontsize=7, padding=2)
    published = axes.bar(x + 0.2, [row["published"] or 0.0 for row in rows], 0.4,
                         color="tab:grey", label="published")
    axes.bar_label(published, labels=[published_text(row["published"]).strip("-") for row in rows],
                   fontsize=7, padding=2)
    axes.set_xticks(x, labels=[row["name"] for row in rows], fontsize=8,
                    rotation=20 if len(rows) > 3 else 0, ha="right" if len(rows) > 3 else "center")
    axes.set_ylabel("test video accuracy (%)")
    axes.set_ylim(0, 105)
    axes.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=2, frameon=False)
    axes.set_title(recipe.name + (" (quick: toy size)" if quick else ""), loc="right")
    fig.tight_layout()
    return fig


def write_report(recipe: Recipe, results: list[Result], out: Path, *, quick: bool,
                 command: str) -> list[dict]:
    rows = table(recipe, results)
    text = markdown(recipe, results, rows, quick=quick, command=command)
    write_atomic(out / "report.md", lambda f: f.write(text.encode()))
    data = {"recipe": recipe.name, "quick": quick, "commit": commit(), "rows": rows}
    write_atomic(out / "report.json",
                 lambda f: f.write(json.dumps(data, indent=1, default=str).encode()))
    save_png(figure(recipe, rows, quick=quick), out / "report.png")
    return rows
