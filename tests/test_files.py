"""Atomic writes: a failed write leaves the old file and no temporary file behind."""
import json

import pytest
import torch

from fusion.checkpoint import load_checkpoint, save_atomic
from fusion.files import write_atomic, write_json_atomic
from fusion.checkpoint import read_model_state
from fusion.streams import build_stream


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"accuracy": 0.5})

    def crash(f):
        f.write(b'{"accura')
        raise KeyboardInterrupt  # a kill in the middle of writing
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, crash)
    assert json.loads(path.read_text()) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_file_that_is_not_a_state_dict_is_one_line_naming_it(tmp_path):
    """A whole pickled model (torch.save(model)) is refused by the safe loader; the error says
    so in one line instead of torch's weights_only advice."""
    whole = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(2, 2), whole)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    for load in (lambda p: build_stream("resnet18", weights=p), read_model_state,
                 load_checkpoint):
        for path in (whole, text):
            with pytest.raises(ValueError) as info:
                load(path)
            message = str(info.value)
            assert f"{path} is not a PyTorch state dict" in message
            assert "\n" not in message and "file an issue" not in message
            assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_replaced_checkpoint_is_kept_as_the_previous_one(tmp_path):
    path, previous = tmp_path / "last.pt", tmp_path / "last.prev.pt"
    for epoch in (1, 2, 3):
        save_atomic({"epoch": epoch}, path, previous=previous)
    assert torch.load(path)["epoch"] == 3 and torch.load(previous)["epoch"] == 2

    def crash(f):
        f.write(b"PK")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):  # a crash while writing epoch 4 keeps both
        write_atomic(path, crash, previous=previous)
    assert torch.load(path)["epoch"] == 3 and torch.load(previous)["epoch"] == 2


def test_a_truncated_checkpoint_is_named_corrupt_with_the_checkpoints_to_go_on_from(
        tmp_path, capsys, load_script):
    run = tmp_path / "run"
    run.mkdir()
    state = {"model": {"w": torch.zeros(1000)}, "config": {}, "optimizer": None}
    for name in ("last.prev.pt", "best.pt", "last.pt"):
        torch.save(state, run / name)
    whole = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(whole[:len(whole) // 2])  # a copy or a disk that gave out
    assert load_script("train_fusion").main(["--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert f"checkpoint {run / 'last.pt'} is corrupt or truncated (" in err
    assert "the end of the file is missing" in err and "not a PyTorch state dict" not in err
    assert f"resume from: --resume {run / 'last.prev.pt'}" in err
    assert f"to evaluate or to initialise a new run from: {run / 'best.pt'}" in err
