"""The command-line scripts, run in-process through their main()."""
import json
from pathlib import Path

import pytest

from fusion.parts import build_two_stream
from fusion.streams import build_stream, count_parameters

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_describe_model_prints_every_tap_and_the_parameter_count(capsys, load_script):
    load_script("describe_model").main(["--stream", "resnet18", "--in-channels", "24",
                                        "--num-classes", "12", "--image-size", "64"])
    out = capsys.readouterr().out
    for tap, shape in [("conv1", "(64, 16, 16)"), ("layer3", "(256, 4, 4)"),
                       ("layer4", "(512, 2, 2)"), ("scores", "(12,)")]:
        line = next(line for line in out.splitlines() if line.startswith(tap))
        assert shape in line
    # the count is the library's (test_streams checks it against seed 001's report)
    stream = build_stream("resnet18", in_channels=24, num_classes=12)
    assert f"{count_parameters(stream):,}" in out.splitlines()[-1]


def test_describe_model_rejects_unknown_stream(load_script, capsys):
    with pytest.raises(SystemExit):
        load_script("describe_model").main(["--stream", "alexnet"])
    assert "unknown stream 'alexnet'; valid: resnet18" in capsys.readouterr().err


def test_describe_model_two_stream_shows_fused_shapes_and_parts(capsys, load_script):
    load_script("describe_model").main([
        "--rgb", "googlenet", "--flow", "resnet18", "--fuse", "conv1x1", "--at", "inception5b",
        "--flow-stack", "12", "--keep-spatial-head", "--num-classes", "12", "--image-size", "64",
        "--segments", "3"])
    out = capsys.readouterr().out
    assert "fusion conv1x1: rgb (1024, 2, 2) + flow (512, 2, 2) -> (1024, 2, 2) per segment, " \
           "3 segment(s)" in out
    parts = {name: int(n.replace(",", ""))
             for name, n in (line.split() for line in out.splitlines()[-5:])}
    # the parts add up to the model's count (test_model checks seed 001's 18,441,784)
    model = build_two_stream(rgb="googlenet", flow="resnet18", fuse="conv1x1", at="inception5b",
                             flow_stack=12, keep_spatial_head=True, num_classes=12)
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total") == \
        count_parameters(model)
    assert parts["fusion"] == count_parameters(model.fusion)


def test_describe_model_needs_one_mode(load_script):
    with pytest.raises(SystemExit):
        load_script("describe_model").main(["--num-classes", "3"])


def test_make_synthetic_writes_the_ucf101_layout(tmp_path, capsys, load_script):
    load_script("make_synthetic").main(["--out", str(tmp_path / "syn"), "--classes", "6",
                                        "--groups", "3", "--clips", "1"])
    assert "wrote 18 videos of 6 classes" in capsys.readouterr().out
    lists = tmp_path / "syn" / "ucfTrainTestlist"
    # Windows line endings, as in the official files.
    assert (lists / "classInd.txt").read_bytes().split(b"\r\n")[:3] == \
        [b"1 RedUp", b"2 RedDown", b"3 RedStill"]
    for split in (1, 2, 3):
        train = (lists / f"trainlist0{split}.txt").read_text().split()
        test = (lists / f"testlist0{split}.txt").read_text().split()
        assert len(test) == 6 and len(train) == 2 * 12  # path and label per training line
    video = "v_BlueStill_g02_c01"
    rgb = sorted((tmp_path / "syn" / "jpegs_256" / video).iterdir())
    u = sorted((tmp_path / "syn" / "tvl1_flow" / "u" / video).iterdir())
    assert rgb[0].name == "frame000001.jpg" and len(u) == len(rgb) - 1


def test_make_synthetic_rejects_odd_class_counts(tmp_path, load_script):
    with pytest.raises(ValueError, match="synthetic classes must be even"):
        load_script("make_synthetic").main(["--out", str(tmp_path / "s"), "--classes", "5"])


def test_bench_runs_and_reports_every_section(tmp_path, capsys, load_script):
    out = tmp_path / "bench.json"
    code = load_script("bench").main([
        "--image-size", "32", "--data-image-size", "32", "--batch-size", "2", "--steps", "1",
        "--backbones", "resnet18", "--workers", "0", "--tvl1-frames", "2", "--fast-frames", "3",
        "--flow-size", "96x72",
        "--data-groups", "3", "--data-clips", "1",
        "--workdir", str(tmp_path / "work"), "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    for heading in ("## data loading", "## training and evaluation steps", "## flow extraction"):
        assert heading in printed
    report = json.loads(out.read_text())
    assert report["data"]["fusion_clips_per_s"] > 0 and report["data"]["pil_clips_per_s"] > 0
    assert "## decode = device" in printed
    assert [row["clips_per_s_per_worker"] > 0 for row in report["data"]["decode"]] == [True] * 3
    (row,) = report["models"]
    assert row["backbone"] == "resnet18" and row["fusion_overhead"] > 0
    assert [r["method"] for r in report["flow"]] == ["tvl1", "tvl1-torch", "dis", "farneback"]


def test_a_mistyped_flag_is_one_line_with_the_closest_flag_then_a_pointer_to_help(
        load_script, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_script("train_fusion").main(["--flow-stak", "5"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2  # no usage dump before it
    assert lines[0].endswith("error: unknown option --flow-stak; did you mean --flow-stack?")
    assert "--help" in lines[1]


@pytest.mark.parametrize("name", sorted(p.stem for p in SCRIPTS.glob("*.py")))
def test_every_script_describes_every_option(name, load_script, capsys, monkeypatch):
    """Every script parses with the shared parser, which refuses an option without a help text
    (fusion.cli); Config's keys take theirs from the class's comments."""
    from fusion.cli import ArgumentParser
    shown = []
    real = ArgumentParser.print_help
    monkeypatch.setattr(ArgumentParser, "print_help",
                        lambda self, *a: shown.append(self) or real(self, *a))
    with pytest.raises(SystemExit) as exit_:
        load_script(name).main(["--help"])
    assert exit_.value.code == 0 and shown, "not parsed with fusion.cli.ArgumentParser"
    printed = capsys.readouterr().out
    if name == "train_fusion":
        assert "SGD momentum (default: 0.9)" in printed
