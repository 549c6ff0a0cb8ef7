"""The index of a packed root's packs (`<root>/.fusion_pack_index.json`): every pack's header
(the first line of its own index, `fusion.data.packs`), so a dataset is made without opening
its packs, and the modification time (st_mtime_ns) of `packs/` and of every folder under it.

Written by what writes packs (`scripts/pack_frames.py`, `extract_frames.py --store packed`) at
the end of every run, resumed ones included; never by a reader (many processes may read one
read-only root). A pack only ever takes its place by a rename into its folder (`write_pack`),
and a rename, like any file made or removed there, changes the folder's mtime. So a reader
trusts the index when every recorded folder's mtime equals the one it had when the index was
written (a stat per folder: one for UCF101's layout, 102 for a folder dataset's, never one per
pack); else (a stale, missing or unreadable index) it reads the packs' headers, as without
one. A pack changed in place, not renamed, is not seen: its frames are read from the pack
itself, so damage is still named when read.

The index lives beside `packs/`, not in it: writing it into `packs/` would change the mtime it
records. And a change that lands within the file system's clock tick of the folder's last one
would leave its mtime unchanged, so the writer records a folder only once its mtime is older
than a file it has just made in the root (the file system's own clock, as git treats its index
and the files it records): any later change then stamps a newer time. A folder changed that
recently is waited for, a few milliseconds at most.
"""
from __future__ import annotations

import gc
import json
import os
import tempfile
import time
from pathlib import Path

from fusion.data.packs import FORMAT as PACK_FORMAT, PACKS, SUFFIX, VERSION as PACK_VERSION
from fusion.data.packs import PackError, PackHeader, read_header
from fusion.files import write_json_atomic

INDEX_FILE = ".fusion_pack_index.json"
FORMAT, VERSION = "fusion-pack-index", 1
RACY_TRIES, RACY_SLEEP = 20, 0.005  # seconds, doubled each try (at most ~5 s in all)


def _fs_now(root: Path) -> int:
    """The file system's time now: the mtime of a file made in `root` (then removed)."""
    fd, name = tempfile.mkstemp(prefix=".fusion_pack_index.", suffix=".now", dir=root)
    try:
        return os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)
        os.unlink(name)


def _scan(tree: Path) -> tuple[dict[str, int], list[str]]:
    """{folder relative to `tree` ("" for itself): its mtime_ns}, each stat'ed before it is
    listed, and the keys of the packs in them (relative path without .tar), sorted."""
    folders, keys = {}, []
    todo = [""]
    while todo:
        rel = todo.pop()
        path = os.path.join(tree, rel) if rel else str(tree)
        folders[rel] = os.stat(path).st_mtime_ns
        with os.scandir(path) as entries:
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    todo.append(name)
                elif entry.name.endswith(SUFFIX) and entry.is_file():
                    keys.append(name[:-len(SUFFIX)])
    return folders, sorted(keys)


def write_pack_index(root: str | Path) -> bool:
    """Write the index of `root`'s packs (atomically); False when it was not written (no
    packs/ folder, or its folders kept changing while the index was made)."""
    root = Path(root)
    tree = root / PACKS
    if not tree.is_dir():
        return False
    for attempt in range(RACY_TRIES):
        now = _fs_now(root)
        folders, keys = _scan(tree)
        if all(mtime < now for mtime in folders.values()):
            break
        time.sleep(RACY_SLEEP * 2 ** min(attempt, 6))
    else:
        return False
    packs = {}
    for key in keys:
        try:
            header = read_header(f"{tree}/{key}{SUFFIX}")
            packs[key] = [header.index_at, header.index_size,
                          {"format": PACK_FORMAT, "version": PACK_VERSION,
                           "size": header.size, "dirs": header.dirs}]
        except OSError:  # gone since, or damaged: a reader reads it and names the damage
            packs[key] = None
    write_json_atomic(root / INDEX_FILE, {"format": FORMAT, "version": VERSION,
                                          "folders": folders, "packs": packs}, indent=None)
    return True


class PackIndex:
    """A trusted index: `entry(key)` is a pack's header as the index holds it."""

    def __init__(self, tree: str, folders: dict[str, int], packs: dict):
        self.tree, self.folders, self.packs = tree, folders, packs
        self._by_folder: dict[str, list[str]] | None = None

    def covers(self, folder: str) -> bool:
        """Whether the index knows all there is in `folder` (relative to packs/)."""
        return folder in self.folders

    def header(self, key: str) -> PackHeader | None:
        """The header of pack `key` from the index; None where the index cannot give it (the
        pack was unreadable when indexed, or its entry is malformed): read the pack then."""
        entry = self.packs.get(key)
        if entry is None:
            return None
        try:
            at, size, line = entry
            return PackHeader(f"{self.tree}/{key}{SUFFIX}", line, at, size)
        except (TypeError, ValueError, KeyError, AttributeError, PackError):
            return None

    def keys_in(self, folder: str) -> list[str]:
        """The names (without .tar) of the packs directly in `folder` ("" for packs/)."""
        if self._by_folder is None:
            self._by_folder = {}
            for key in self.packs:
                at, _, name = key.rpartition("/")
                self._by_folder.setdefault(at, []).append(name)
        return self._by_folder.get(folder, [])


def _loads(text: bytes):
    """json.loads with the garbage collector paused: the index is some 20 small objects per
    pack, whose making would otherwise set off full collections of everything the process
    holds (with torch imported, 0.2 s instead of 0.02 s for 5,000 packs)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return json.loads(text)
    finally:
        if enabled:
            gc.enable()


def load_pack_index(root: str | Path) -> PackIndex | None:
    """The index of `root`'s packs when it is there, readable and current (every folder it
    records has the mtime it recorded); else None."""
    root = Path(root)
    try:
        with open(root / INDEX_FILE, "rb") as f:
            data = _loads(f.read())
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            return None
        folders, packs = data["folders"], data["packs"]
        if not isinstance(folders, dict) or not isinstance(packs, dict) or "" not in folders:
            return None
        tree = root / PACKS
        for rel, mtime in folders.items():
            path = os.path.join(tree, rel) if rel else tree
            if os.stat(path).st_mtime_ns != mtime:
                return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return PackIndex(str(tree), folders, packs)
