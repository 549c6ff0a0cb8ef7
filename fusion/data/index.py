"""Per-video frame counts, built on first use and cached as plain JSON next to the data.

An entry is a folder and a file-name template (`jpegs_256/v_X/frame{:06d}.jpg`; a rawframes
folder holds RGB and flow under three templates). Each keeps the folder's modification time; a
folder whose frames were added, removed or renamed has a new one and is counted again, so the
cache never goes stale.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from fusion.files import write_json_atomic

INDEX_NAME = ".fusion_frame_index.json"
VERSION = 2  # entries per folder and template


class FrameIndex:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / INDEX_NAME
        self.entries: dict[str, list[int]] = {}
        self.changed = False
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("version") == VERSION:
                    self.entries = data["folders"]
            except (ValueError, KeyError, TypeError, AttributeError):
                self.changed = True  # unreadable cache: rebuild it

    def count(self, folder: Path, template: str) -> int:
        """Number of files in `folder` named by `template` (0 if it does not exist)."""
        try:
            mtime = os.stat(folder).st_mtime_ns
        except FileNotFoundError:
            return 0
        key = os.path.join(os.path.relpath(folder, self.root), template)
        cached = self.entries.get(key)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        prefix, suffix = template.split("{", 1)[0], template.rsplit("}", 1)[-1]
        with os.scandir(folder) as entries:
            n = sum(1 for e in entries if e.name.startswith(prefix) and e.name.endswith(suffix))
        self.entries[key] = [mtime, n]
        self.changed = True
        return n

    def save(self) -> None:
        if not self.changed:
            return
        try:
            write_json_atomic(self.path, {"version": VERSION, "folders": self.entries},
                              indent=None)
            self.changed = False
        except OSError as err:  # a read-only dataset still works, it is counted each time
            warnings.warn(f"could not write the frame index {self.path}: {err}")
