"""Atomic writes: a failed write leaves the old file and no temporary file behind."""
import json

import pytest
import torch

from fusion.checkpoint import load_checkpoint
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
