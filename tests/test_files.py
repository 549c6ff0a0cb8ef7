"""Atomic writes: a failed write leaves the old file and no temporary file behind."""
import json

import pytest

from fusion.files import write_atomic, write_json_atomic


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
