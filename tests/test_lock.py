"""Folder locks (fusion.lock): one live holder at a time, stale locks taken over."""
import json
import os
import socket
import subprocess
import sys

import pytest

from fusion.lock import FolderLocked, acquire, locked, release


def test_a_locked_folder_refuses_a_second_holder_naming_the_folder_and_the_holder(tmp_path):
    with locked(tmp_path / "run") as lock:
        with pytest.raises(FolderLocked) as err:
            acquire(tmp_path / "run")
        message = str(err.value)
        assert message.startswith(f"{tmp_path / 'run'} is in use by pid {os.getpid()} on "
                                  f"{socket.gethostname()}")
        assert str(lock) in message
    assert not lock.exists()  # released
    release(acquire(tmp_path / "run"))  # and free again


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, capsys):
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(),
                                              "since": "earlier"}))
    lock = acquire(folder)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"removed the stale lock of pid {gone.pid}" in capsys.readouterr().out
    release(lock)


def test_a_pid_reused_by_a_later_process_is_not_the_holder(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    # our own pid, but recorded with another start time: the holder was an earlier process
    (folder / ".lock").write_text(json.dumps({"pid": os.getpid(), "start": "1",
                                              "host": socket.gethostname()}))
    release(acquire(folder))


def test_a_holder_on_another_host_is_assumed_alive_and_the_error_says_what_to_delete(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").write_text(json.dumps({"pid": 1, "host": "node-elsewhere",
                                              "since": "2024-01-01 00:00:00"}))
    with pytest.raises(FolderLocked, match=r"pid 1 on node-elsewhere since 2024-01-01 00:00:00 "
                                           r"\(lock file .*\.lock; delete it if that process "
                                           r"no longer runs\)"):
        acquire(folder)
