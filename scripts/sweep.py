r"""Run a sweep of train_fusion.py runs, each in its own folder under --out, then print one table
and write summary.png (scripts/summarize.py's).

    python scripts/sweep.py --out runs/s --grid fuse=conv1x1,sum --grid split=1,2,3 \
        --config configs/ucf101_resnet18_conv1x1.toml --epochs 5        # 6 runs, one at a time
    python scripts/sweep.py --out runs/s --grid seed=0,1,2,3 --parallel 4 ...  # a GPU each
    python scripts/sweep.py --out runs/s --grid-file sweep.toml --launcher slurm \
        --partition gpu --time 720 ...                    # a Slurm job array through submitit
    python scripts/sweep.py --out runs/s --run step schedule=step step_size=5 \
        --run cyclic schedule=cyclic max_lr=1e-4 ...      # named runs, each with its own options

The runs are every --run (NAME KEY=VALUE ...) times every combination of the --grid values
(KEY=V1,V2,...), KEY being any train_fusion.py option (flow_stack or --flow-stack). A TOML file
(--grid-file) may hold both:

    [grid]
    fuse = ["conv1x1", "sum"]
    split = [1, 2, 3]
    [runs.step]
    schedule = "step"

Every other option goes to each run's train_fusion.py as given. A run is named by its --run name
and its grid values (step_split-2, fuse-sum_split-2), in OUT/<name>/. A finished run
(metrics.json) is never run again, an interrupted one (last.pt) resumes, a failed one shows in
the table with its error line and the others go on; each run's attempts and output are in its
sweep.log. On Slurm, a run preempted or at its --time limit is requeued and resumes from last.pt
(submitit's checkpointing). The exit status is 1 when a run failed.
"""
import importlib.util
import sys
from pathlib import Path

from fusion.cli import ArgumentParser
from fusion.config import build_parser, resolve
from fusion.sweep import (add_launcher_arguments, check_launcher, expand, launch,
                          load_sweep_file, parse_grid, parse_named)

SCRIPTS = Path(__file__).resolve().parent


def parse(argv):
    parser = ArgumentParser(__doc__, allow_abbrev=False)
    parser.add_argument("--out", required=True, help="the sweep folder; a run in OUT/<name>")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="a train_fusion.py option and its values; several --grid: every "
                             "combination")
    parser.add_argument("--run", action="append", default=[], nargs="+",
                        metavar=("NAME", "KEY=VALUE"),
                        help="a named run with its own options (times the grid)")
    parser.add_argument("--grid-file", help="TOML file with [grid] and [runs.NAME] tables")
    parser.add_argument("--script", default=str(SCRIPTS / "train_fusion.py"),
                        help="what each run runs: train_fusion.py, or a script taking its "
                             "options and writing the same run folder")
    add_launcher_arguments(parser, what="runs")
    return parser.parse_known_args(argv)


def summarize(out: Path, failed: dict[str, str]) -> int:
    """scripts/summarize.py's table and summary.png, with the failed runs' rows."""
    spec = importlib.util.spec_from_file_location("summarize", SCRIPTS / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.report(out, failed)


def main(argv=None) -> int:
    args, common = parse(argv)
    out = Path(args.out)
    try:
        grid, named = load_sweep_file(args.grid_file) if args.grid_file else ({}, {})
        grid.update(parse_grid(args.grid))
        given = parse_named(args.run)
        if set(given) & set(named):
            raise ValueError(f"runs named in {args.grid_file} and by --run: "
                             f"{', '.join(sorted(set(given) & set(named)))}")
        named.update(given)
        runs = expand(grid=grid, named=named, common=common, out=out, script=args.script)
        check_launcher(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    # Every run's options are checked here: a typo stops the sweep (the parser's message), a bad
    # value fails that run alone, before anything starts.
    parser = build_parser(__doc__)
    invalid = {}
    for run in runs:
        if run.plan()[0] == "start":
            try:
                resolve(parser.parse_args(run.argv))
            except (ValueError, FileNotFoundError) as err:
                invalid[run.name] = str(err)
    print(f"[sweep] {len(runs)} runs in {out} ({args.launcher}"
          + (f", {args.parallel} at a time" if args.parallel > 1 else "") + ")", flush=True)
    todo = [run for run in runs if run.name not in invalid]
    try:
        outcomes = launch(todo, args, out / ".submitit", name=f"sweep-{out.name}")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    failed = {**invalid, **{o["name"]: o["error"] for o in outcomes if o["status"] == "failed"}}
    counts = {s: sum(o["status"] == s for o in outcomes)
              for s in ("finished", "trained", "resumed")}
    print(f"\n[sweep] {len(runs)} runs: {counts['trained']} trained, {counts['resumed']} "
          f"resumed, {counts['finished']} finished before, {len(failed)} failed", flush=True)
    code = summarize(out, failed)
    return 1 if failed else code


if __name__ == "__main__":
    sys.exit(main())
