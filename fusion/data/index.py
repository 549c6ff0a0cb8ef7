"""Per-video frame counts, built on first use and cached as plain JSON next to the data.

Each entry keeps the folder's modification time; a folder whose frames were added, removed or
renamed has a new one and is counted again, so the cache never goes stale.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from fusion.files import write_json_atomic

INDEX_NAME = ".fusion_frame_index.json"


class FrameIndex:
    def __init__(self, root: Path, template: str):
        self.root = Path(root)
        self.path = self.root / INDEX_NAME
        self.prefix = template.split("{", 1)[0]
        self.suffix = template.rsplit("}", 1)[-1]
        self.key = template
        self.entries: dict[str, list[int]] = {}
        self.changed = False
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("template") == template:
                    self.entries = data["folders"]
            except (ValueError, KeyError, TypeError):
                self.changed = True  # unreadable cache: rebuild it

    def count(self, folder: Path) -> int:
        """Number of frames in `folder` (0 if it does not exist)."""
        try:
            mtime = os.stat(folder).st_mtime_ns
        except FileNotFoundError:
            return 0
        key = os.path.relpath(folder, self.root)
        cached = self.entries.get(key)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        with os.scandir(folder) as entries:
            n = sum(1 for e in entries
                    if e.name.startswith(self.prefix) and e.name.endswith(self.suffix))
        self.entries[key] = [mtime, n]
        self.changed = True
        return n

    def save(self) -> None:
        if not self.changed:
            return
        try:
            write_json_atomic(self.path, {"template": self.key, "folders": self.entries},
                              indent=None)
            self.changed = False
        except OSError as err:  # a read-only dataset still works, it is counted each time
            warnings.warn(f"could not write the frame index {self.path}: {err}")
