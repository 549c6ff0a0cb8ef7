"""Where a dataset root keeps its frames, as the dataset readers see it (docs/design.md §8):
loose (one file per frame, the releases' layouts) or packed (one tar per video under
`<root>/packs/`, `fusion.data.packs`). The readers ask a store for a video's folders and their
frame counts, and get paths that `imagefiles.read_bytes` reads from either store.

    store = open_store(root, "auto")      # packed when <root>/packs/ exists, else loose

Where a video's pack lies mirrors what names the video in its layout:
    ucf101, hmdb51:  packs/<video>.tar               (jpegs_256/<video>/, tvl1_flow/u/<video>/ ...)
    folder:          packs/<class>/<video>.tar       (<class>/<video>/, <class>/<video>/u/ ...)
    rawframes:       packs/<video dir>.tar           (rawframes/<video dir>/)
A pack's files keep their loose paths, so a packed video's folder is the pack's path followed by
the loose folder: `<root>/packs/v_X.tar/jpegs_256/v_X`.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fusion.choices import FRAME_STORES, resolve_name
from fusion.data.index import FrameIndex
from fusion.data.loader import FrameError
from fusion.data.pack_index import PackIndex, load_pack_index
from fusion.data.packs import PACKS, SUFFIX, PackError, PackHeader, read_header, split


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected the folder {path}")
    return path


def open_store(root: str | Path, frames: str = "auto") -> "LooseStore | PackedStore":
    """The store of `root`: `frames` "loose", "packed", or "auto" (packed when the root holds
    a `packs/` folder, as `scripts/pack_frames.py` and `extract_frames.py --store packed` write
    it)."""
    resolve_name(frames, FRAME_STORES, "frames")
    root = Path(root)
    packed = (root / PACKS).is_dir()
    if frames == "packed" and not packed:
        raise FileNotFoundError(f"frames = 'packed': expected the packs of {root} in the folder "
                                f"{root / PACKS} (scripts/pack_frames.py writes them)")
    return PackedStore(root) if frames == "packed" or (frames == "auto" and packed) \
        else LooseStore(root)


class FolderLookup:
    """Find a video's folder by name, falling back to a case-insensitive match (UCF101's
    HandstandPushups / HandStandPushups)."""

    def __init__(self, root: Path):
        self.root = root
        self.lower = {name.lower(): name for name in os.listdir(root)}

    def find(self, name: str) -> Path | None:
        if (self.root / name).is_dir():
            return self.root / name
        actual = self.lower.get(name.lower())
        return self.root / actual if actual else None

    def where(self, name: str) -> Path:
        return self.root / name


class LooseStore:
    """Frames as files: a video's folder is `<root>/<folder>`; counts come from `FrameIndex`
    (scanned on first use, cached in the root)."""

    kind = "loose"

    def __init__(self, root: Path):
        self.root = root
        self.tree = root  # where a folder dataset's class folders are
        self.index = FrameIndex(root)

    def lookup(self, folder: str, what: str) -> FolderLookup:
        """Videos by name in `<root>/<folder>` (`jpegs_256`, `tvl1_flow/u`, ...)."""
        return FolderLookup(require_dir(self.root / folder, what))

    def video_dir(self, key: str, folder: str) -> Path | None:
        """The video `key`'s folder `folder` (relative to the root), or None if missing."""
        path = self.root / folder
        return path if path.is_dir() else None

    def where(self, key: str, folder: str) -> Path:
        """Where `video_dir` looks (for messages)."""
        return self.root / folder

    def videos_in(self, group: str) -> list[str]:
        """The videos of a folder dataset's class, sorted."""
        return sorted(d.name for d in (self.root / group).iterdir() if d.is_dir())

    def prefetch(self, keys, *, by_name: bool = False) -> None:
        """Nothing to read ahead: folders are counted as they are met."""

    def count(self, folder: Path, template: str) -> int:
        return self.index.count(folder, template)

    def is_file(self, path: str | Path) -> bool:
        return os.path.isfile(path)

    def save(self) -> None:
        self.index.save()


PREFETCH_THREADS, PROBE, SLOW_READ = 16, 32, 100e-6


def _read_header(pack: str) -> PackHeader | PackError | None:
    """A pack's header, the error that names its damage, or None when there is no pack."""
    try:
        return read_header(pack)
    except FileNotFoundError:
        return None
    except PackError as err:
        return err
    except OSError as err:
        return PackError(f"{pack}: {err.strerror or err}")


def _read_headers(packs: list[str]) -> list[PackHeader | PackError | None]:
    return [_read_header(p) for p in packs]


class _PackLookup:
    """Videos by name among the packs of a UCF101-layout root, each holding `<folder>/<name>`
    (packs matched by name, then ignoring case, as `FolderLookup` matches folders)."""

    def __init__(self, store: "PackedStore", folder: str):
        self.store, self.folder = store, folder

    def find(self, name: str) -> Path | None:
        key = self.store.pack_named(name)
        return None if key is None else self.store.video_dir(key, f"{self.folder}/{key}")

    def where(self, name: str) -> Path:
        return self.store.where(name, f"{self.folder}/{name}")


class PackedStore:
    """Frames in packs under `<root>/packs/`. Counts come from the packs' own indexes (the
    first line of each, a few hundred bytes): from the root's index of them when it is current
    (`fusion.data.pack_index`: no pack opened), else read once per pack while the dataset is
    made. Paths are handled as strings inside (pathlib's parsing would cost more than reading
    the packs' headers)."""

    kind = "packed"

    def __init__(self, root: Path):
        self.root = root
        self.tree = root / PACKS
        self._tree = str(self.tree)
        self._headers: dict[str, PackHeader | PackError] = {}
        self._names: set[str] | None = None  # the packs in packs/ (UCF101's layout)
        self._lower: dict[str, str] = {}
        self._index: PackIndex | None = load_pack_index(root)

    def lookup(self, folder: str, what: str) -> _PackLookup:
        return _PackLookup(self, folder)

    def _pack(self, key: str) -> str:
        return f"{self._tree}/{key}{SUFFIX}"

    def pack_named(self, name: str) -> str | None:
        """The key of the pack named `name` in packs/, else of one whose name matches ignoring
        case (from one listing of packs/, not a look-up per video)."""
        if self._names is None:
            self._names = set(self._index.keys_in("")) if self._index is not None else {
                n[:-len(SUFFIX)] for n in os.listdir(self.tree) if n.endswith(SUFFIX)}
            self._lower = {n.lower(): n for n in self._names}
        return name if name in self._names else self._lower.get(name.lower())

    def prefetch(self, keys, *, by_name: bool = False) -> None:
        """Read the headers of the packs of `keys` (pack names under packs/, or with `by_name`
        the names `pack_named` takes) before they are asked for: one by one while the reads
        are quick (a warm page cache, where threads would only contend), the rest in
        `PREFETCH_THREADS` threads once the first `PROBE` reads took more than `SLOW_READ`
        seconds each (a cold disk, a network file system: the reads then overlap)."""
        if by_name:
            keys = (self.pack_named(k) for k in keys)
        todo = [p for p in dict.fromkeys(self._pack(k) for k in keys if k is not None)
                if p not in self._headers and not self._indexed(p)]
        start = time.perf_counter()
        for pack in todo[:PROBE]:
            self._remember(pack, _read_header(pack))
        rest = todo[PROBE:]
        if not rest:
            return
        if time.perf_counter() - start < PROBE * SLOW_READ:
            for pack in rest:
                self._remember(pack, _read_header(pack))
            return
        chunks = [rest[k::PREFETCH_THREADS] for k in range(PREFETCH_THREADS)]
        with ThreadPoolExecutor(PREFETCH_THREADS) as pool:
            for chunk, headers in zip(chunks, pool.map(_read_headers, chunks)):
                for pack, header in zip(chunk, headers):
                    self._remember(pack, header)

    def _indexed(self, pack: str) -> bool:
        """Whether the root's index (when current) gave the header of `pack` (then
        remembered). A pack it lacks is looked for on disk (a path it would not name so)."""
        index = self._index
        if index is None or not pack.startswith(self._tree + "/"):
            return False
        header = index.header(pack[len(self._tree) + 1:-len(SUFFIX)])
        if header is None:  # unreadable when indexed: read it, and name its damage
            return False
        self._headers[pack] = header
        return True

    def _remember(self, pack: str, header: PackHeader | PackError | None) -> None:
        if header is not None:  # no pack: `header` says so when asked
            self._headers[pack] = header

    def header(self, pack: str) -> PackHeader:
        """The pack's header, read once; a damaged one is a `FrameError` naming the pack."""
        cached = self._headers.get(pack)
        if cached is None and self._indexed(pack):
            cached = self._headers[pack]
        if cached is None:
            cached = _read_header(pack)
            if cached is None:
                raise FileNotFoundError(pack)
            self._headers[pack] = cached
        if isinstance(cached, PackError):
            raise FrameError(f"cannot read the pack {cached}")
        return cached

    def video_dir(self, key: str, folder: str) -> str | None:
        """`<pack of key>/<folder>` when the pack holds that folder (or one matching it but for
        case); None when there is no such pack or folder. A damaged pack gives its path, and
        counting its frames the error that names it. A string, not a Path: made once per
        folder of every video at start-up, where pathlib's parsing was a third of the time."""
        pack = self._pack(key)
        try:
            actual = self.header(pack).find_dir(folder)
        except FileNotFoundError:
            return None
        except FrameError:
            return f"{pack}/{folder}"
        return None if actual is None else f"{pack}/{actual}"

    def where(self, key: str, folder: str) -> str:
        return f"{self._pack(key)}/{folder}"

    def videos_in(self, group: str) -> list[str]:
        if self._index is not None and self._index.covers(group):
            return sorted(self._index.keys_in(group))
        return sorted(p.name[:-len(SUFFIX)] for p in (self.tree / group).iterdir()
                      if p.name.endswith(SUFFIX) and p.is_file())

    def _parts(self, path: str | Path) -> tuple[str, str]:
        parts = split(str(path))
        if parts is None:
            raise ValueError(f"{path} is not a path into a pack")
        return parts

    def count(self, folder: str | Path, template: str) -> int:
        pack, member = self._parts(folder)
        return self.header(pack).count(member, template)

    def is_file(self, path: str | Path) -> bool:
        pack, member = self._parts(path)
        folder, _, name = member.rpartition("/")
        try:
            return self.header(pack).has(folder, name)
        except (FileNotFoundError, FrameError):
            return False

    def save(self) -> None:
        self._headers.clear()  # the dataset is made: the readers open the packs themselves
        self._index = None
