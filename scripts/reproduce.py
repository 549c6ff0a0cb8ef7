r"""Reproduce a report's table with one command: every stage of its study (extraction, each
stream, each fused model initialised from the trained streams, the report's test protocol) for
each split and seed, then DIR/report.md and report.png with our numbers beside the published
ones and where every number came from.

    python scripts/reproduce.py --list                       # the recipes and what each runs
    python scripts/reproduce.py seed000 --data-root data/ucf101
    python scripts/reproduce.py simonyan2014 --data-root data/ucf101 --splits 1,2,3 --seeds 0,1
    python scripts/reproduce.py seed001 --data-root data/hmdb51 \
        --data-root stanford40=data/stanford40 --videos hmdb51_videos/   # extracts first
    python scripts/reproduce.py feichtenhofer2016 --data-root data/ucf101 --launcher slurm \
        --partition gpu --time 720                           # each stage a Slurm job
    python scripts/reproduce.py seed003 --quick              # toy size on the synthetic data

A recipe is configs/recipes/NAME.toml (fusion/recipes.py says what it holds). The study lives in
--out (default runs/reproduce/NAME), a stage in OUT/<split>_<seed>/<stage>/. Run the command
again after any interruption and it continues: a finished stage whose settings are unchanged is
skipped, an interrupted one resumes from last.pt, and a stage whose settings changed (the
recipe, a config it names, --set) runs again with every stage that depends on it. With --videos
the frames are extracted first, with the recipe's flow method and pair policy; without it the
data root's extraction.json must agree with the recipe, or the study stops before training.
The exit status is 1 when a stage failed (the report then shows which).
"""
import shlex
import sys
from pathlib import Path

from fusion.cli import ArgumentParser
from fusion.recipes import list_recipes, load_recipe
from fusion.lock import FolderLocked, locked
from fusion.study import OWNED, Cell, Study
from fusion.sweep import add_launcher_arguments, check_launcher, config_key, launch

QUICK_ROOT = Path("data/synthetic")  # the demo's data, generated on first use


def parse(argv):
    parser = ArgumentParser(__doc__, allow_abbrev=False)
    parser.add_argument("recipe", nargs="?", help="a recipe's name (--list) or .toml file")
    parser.add_argument("--list", action="store_true", help="name every recipe and its stages")
    parser.add_argument("--data-root", action="append", default=[], metavar="[NAME=]PATH",
                        help="the dataset root (default: the configs'); NAME=PATH for a "
                             "recipe's other data (e.g. stanford40=...)")
    parser.add_argument("--videos", help="raw videos to extract into the data root first "
                                         "(the recipe's flow method and pair policy)")
    parser.add_argument("--out", help="the study's folder (default: runs/reproduce/RECIPE)")
    parser.add_argument("--splits", help="official splits, e.g. 1,2,3 (default: the recipe's)")
    parser.add_argument("--seeds", default="0", help="seeds, e.g. 0,1,2: every stage each")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a train_fusion.py option for every training stage, e.g. "
                             "--set rgb=timm:inception_v4 (the stages it changes run again)")
    parser.add_argument("--quick", action="store_true",
                        help="toy size on the synthetic data (generated in data/synthetic "
                             "unless --data-root names it): the recipe's plumbing in minutes")
    add_launcher_arguments(parser, what="stages")
    return parser.parse_args(argv)


def numbers(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected numbers separated by commas") from None
    if not values:
        raise ValueError(f"{option} {text!r}: no value")
    return list(dict.fromkeys(values))  # 0,0 is one seed


def describe(name: str) -> str:
    recipe = load_recipe(name)
    waves = " -> ".join(" + ".join(wave) for wave in recipe.waves())
    rows = "; ".join(f"{r.name} {r.published if r.published is not None else '-'}"
                     for r in recipe.rows)
    splits = ",".join(map(str, recipe.splits)) or "none (no official splits)"
    return (f"{name}: {recipe.title}\n    stages: {waves}\n    splits: {splits}\n"
            f"    published: {rows}")


def cells(recipe, args) -> list[Cell]:
    seeds = numbers(args.seeds, "--seeds")
    if not recipe.splits:
        if args.splits:
            raise ValueError(f"--splits: recipe {recipe.name}'s dataset has no official splits")
        return [Cell(None, seed) for seed in seeds]
    splits = numbers(args.splits, "--splits") if args.splits else list(recipe.splits)
    bad = [s for s in splits if s not in (1, 2, 3)]
    if bad:
        raise ValueError(f"--splits: {bad} are not official splits (1, 2, 3)")
    return [Cell(split, seed) for split in splits for seed in seeds]


def data_roots(recipe, args, out: Path) -> dict[str, Path]:
    """'' -> the study's root, NAME -> a named root; in --quick the synthetic data (generated
    when absent) and still images cut from it for a named root."""
    roots = {}
    for item in args.data_root:
        name, sep, path = item.rpartition("=")
        if sep and name not in recipe.data:
            raise ValueError(f"--data-root {item}: recipe {recipe.name} reads no data named "
                             f"{name!r}" + (f" (it reads {', '.join(recipe.data)})"
                                            if recipe.data else ""))
        roots[name] = Path(path)
    if args.quick:
        from fusion.data.synthetic import make_synthetic, still_images
        root = roots.setdefault("", QUICK_ROOT)
        if not (root / "jpegs_256").is_dir():
            print(f"[reproduce] generating the synthetic data in {root}", flush=True)
            make_synthetic(root)
        for name in recipe.data:
            if name not in roots:
                roots[name] = still_images(root, out / "quick_data" / name)
    needed = {s.data for s in recipe.stages.values() if s.data}
    missing = sorted(needed - set(roots))
    if missing:
        raise ValueError("; ".join(f"recipe {recipe.name} reads {name} ({recipe.data[name]}): "
                                   f"give --data-root {name}=PATH" for name in missing))
    return roots


def main(argv=None) -> int:
    args = parse(argv)
    if args.list:
        print("\n".join(describe(name) for name in list_recipes()))
        return 0
    if not args.recipe:
        print("error: name a recipe (--list shows them)", file=sys.stderr)
        return 1
    try:
        recipe = load_recipe(args.recipe)
        out = Path(args.out or f"runs/reproduce/{recipe.name}" + ("_quick" if args.quick else ""))
        if args.videos and args.quick:
            raise ValueError("--videos and --quick: the quick run uses the synthetic data")
        extra = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected KEY=VALUE")
            key = config_key(key)
            if key in OWNED or key.startswith("init_"):
                raise ValueError(f"--set {item}: the study sets {key} itself (--splits, "
                                 f"--seeds, --data-root, the stages' init)")
            extra[key] = value
        check_launcher(args)
        study = Study(recipe, out, roots=data_roots(recipe, args, out), cells=cells(recipe, args),
                      quick=args.quick, videos=Path(args.videos) if args.videos else None,
                      extra=extra)
        study.preflight()
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"[reproduce] {recipe.name}: {len(study.cells)} x {len(recipe.stages)} stages in "
          f"{out} ({args.launcher})", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with locked(out, ".reproduce.lock"):  # one command per study at a time
            results = study.run(lambda runs: launch(runs, args, out / ".submitit",
                                                    name=f"reproduce-{recipe.name}"))
            if not results:  # the extraction failed and said why; the last report stands
                return 1
            from fusion.study_report import write_report
            command = "python scripts/reproduce.py " + shlex.join(
                sys.argv[1:] if argv is None else argv)
            write_report(recipe, results, out, quick=args.quick, command=command)
    except (ValueError, FolderLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    text = (out / "report.md").read_text()
    print("\n" + "\n".join(line for line in text.splitlines() if line.startswith("|")))
    unfinished = [r for r in results if r.status in ("failed", "blocked")]
    print(f"\n[reproduce] report: {out / 'report.md'}, {out / 'report.png'}"
          + (f"; {len(unfinished)} stages did not finish" if unfinished else ""), flush=True)
    return 1 if unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
