"""A folder in use is locked: `<folder>/.lock` holds the pid and host of the process using it.

    with locked(run_dir):          # a second command on run_dir stops at once, naming us
        ...

The lock file is created with O_CREAT | O_EXCL, which the file system grants to one process
only (also on NFS), so of two commands started within the same second one wins and the other
stops. A lock outlives a process killed with SIGKILL; it is stale, and taken over, when its
holder ran on this host and no longer runs (the pid is gone, or now belongs to a process that
started later). A holder on another host cannot be checked from here: the error then says
which file to delete once that process is known to be gone.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".lock"


class FolderLocked(FileExistsError):
    """The folder is in use by another live process."""


def process_start(pid: int) -> str | None:
    """When `pid` started (Linux's /proc/<pid>/stat, clock ticks since boot), which tells a
    holder from a later process given the same pid; None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, after the command name in brackets


def holder_alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot be checked from this host
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    start = process_start(pid)
    return start is None or holder.get("start") in (None, start)


def read_holder(lock: Path) -> dict | None:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return None  # gone meanwhile, or being written: treated as held


def describe(holder: dict | None, lock: Path) -> str:
    if holder is None:
        return f"another process (lock file {lock} is unreadable; delete it if no command " \
               f"uses the folder)"
    where = f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
    if holder.get("host") != socket.gethostname():
        return f"{where} (lock file {lock}; delete it if that process no longer runs)"
    return f"{where} (lock file {lock})"


def acquire(folder: str | Path, name: str = LOCK_NAME) -> Path:
    """Create `folder` if needed and lock it for this process (the lock file `name` in it, so
    that independent users of one folder, such as the shards of an extraction, hold their own);
    returns the lock file. Raises FolderLocked naming the holder when a live process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / name
    me = {"pid": os.getpid(), "host": socket.gethostname(), "start": process_start(os.getpid()),
          "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": sys.argv}
    for _ in range(2):  # a second try after taking over a stale lock
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_holder(lock)
            if holder is None or holder_alive(holder):
                raise FolderLocked(f"{folder} is in use by {describe(holder, lock)}") from None
            print(f"note: {folder}: removed the stale lock of pid {holder['pid']} (no longer "
                  f"running)")
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return lock
    raise FolderLocked(f"{folder} is in use by {describe(read_holder(lock), lock)}")


def release(lock: Path) -> None:
    """Remove the lock file if it is still this process's."""
    holder = read_holder(lock)
    if holder is not None and holder.get("pid") == os.getpid() and \
            holder.get("host") == socket.gethostname():
        lock.unlink(missing_ok=True)


def live_holders(folder: str | Path, pattern: str) -> list[str]:
    """Who holds the lock files matching `pattern` in `folder` and still runs, described."""
    found = []
    for lock in sorted(Path(folder).glob(pattern)):
        holder = read_holder(lock)
        if holder is None or holder_alive(holder):
            found.append(describe(holder, lock))
    return found


@contextlib.contextmanager
def locked(folder: str | Path, name: str = LOCK_NAME):
    lock = acquire(folder, name)
    try:
        yield lock
    finally:
        release(lock)
