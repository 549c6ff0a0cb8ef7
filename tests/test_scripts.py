"""The command-line scripts, run in-process through their main()."""
import importlib.util
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_describe_model_prints_every_tap_and_the_parameter_count(capsys):
    load_script("describe_model").main(["--stream", "resnet18", "--in-channels", "24",
                                        "--num-classes", "12", "--image-size", "64"])
    out = capsys.readouterr().out
    for tap, shape in [("conv1", "(64, 16, 16)"), ("layer3", "(256, 4, 4)"),
                       ("layer4", "(512, 2, 2)"), ("scores", "(12,)")]:
        line = next(line for line in out.splitlines() if line.startswith(tap))
        assert shape in line
    assert "11,248,524" in out.splitlines()[-1]


def test_describe_model_rejects_unknown_stream():
    with pytest.raises(SystemExit):
        load_script("describe_model").main(["--stream", "alexnet"])
