"""The packed frame store (docs/design.md §8): one uncompressed POSIX tar per video holding the
video's frame files byte for byte, named by their loose paths under the dataset root, and led by
a small index member, so that any frame is one positioned read (`os.pread`), never a scan.

    <root>/packs/v_X.tar                       one video (`scripts/pack_frames.py` writes them)
        .pack-index/v_X.jsonl                  the index, the first member
        jpegs_256/v_X/frame000001.jpg          the loose files, frame by frame: each number's
        tvl1_flow/u/v_X/frame000001.jpg        files of every stream together, so a clip's
        tvl1_flow/v/v_X/frame000001.jpg        frames (a stack of flow and the RGB frames in
        jpegs_256/v_X/frame000002.jpg ...      its span) lie in one stretch of the file

`tar -xf v_X.tar -C DIR` gives the loose files back (with `--exclude=.pack-index` not even the
index). A frame inside a pack is addressed like a file inside a folder,
`<root>/packs/v_X.tar/jpegs_256/v_X/frame000001.jpg`: `imagefiles.read_bytes` passes such paths
to `read_member`, so the datasets, their error messages (pack, stream and frame in one path) and
`decode = device` treat both stores alike.

The index is JSON lines. Line 1 says what the pack holds:
    {"format": "fusion-pack", "version": 1, "size": <bytes of the whole pack>, "files": N,
     "dirs": {"jpegs_256/v_X": {"runs": [["frame{:06d}.jpg", 1, 164]], "names": [...]}, ...}}
a run [template, first, count] standing for the files template.format(first + k), k < count,
"names" for any others; then one line per folder, in the same order,
    {"dir": "jpegs_256/v_X", "at": [byte offset of each file's data], "sizes": [...]}
for the files of its runs, in order, then its names. Line 1 alone gives the frame counts, which
is all a dataset reads at start-up (a few hundred bytes per video); a process reading frames
reads the whole index when it opens the pack. A pack is written as `<name>.tar.partial` and
renamed when complete, so a killed writer leaves no pack; one cut short later (a copy that
stopped) is told by its size, which line 1 records: `complete` checks it, and a frame whose
bytes lie past the end of the file is a `PackError` naming the pack and the frame.

A dataset's sample reads its clip ahead (`read_ahead`): the files of a pack that lie less than
`GAP` bytes apart come in one positioned read, so a clip is one read, not 21.

Reading is per process: each keeps its own descriptors, opened on first use (a process forked
after opening packs, a DataLoader worker, drops its parent's table and opens its own; `pread`
shares no file position anyway), at most `max_open()` of them, least recently used closed first.
"""
from __future__ import annotations

import functools
import json
import os
import re
import stat
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

FORMAT, VERSION = "fusion-pack", 1
PACKS = "packs"  # the folder of a packed dataset root's packs (`fusion.data.stores`)
SUFFIX = ".tar"
MARK = SUFFIX + "/"  # in a path: the end of a pack's file name, a member's name follows
INDEX_DIR = ".pack-index"
PARTIAL = ".partial"
BLOCK = tarfile.BLOCKSIZE  # 512
HEAD = 4096  # bytes read to find the index's first line (a pack's header at start-up)
GAP, SPAN = 1 << 16, 1 << 22  # read ahead through gaps up to GAP bytes, SPAN bytes at most
READER_HEAD = 1 << 14  # and to open a pack for reading: most indexes whole in one read
_ENCODING, _ERRORS = "utf-8", "surrogateescape"  # tarfile's own defaults on POSIX
_NUMBERED = re.compile(r"^(.*?)(\d+)(\D*)$")  # prefix, the last run of digits, suffix


class PackError(OSError):
    """A pack that cannot be read: not a pack, cut short, or without the asked-for file."""


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


# ---------------------------------------------------------------------------- the index

def _runs(names: list[str]) -> tuple[list[list], list[str]]:
    """A folder's file names -> runs [template, first, count] of consecutively numbered names
    with one prefix, digit count and suffix, and the names left over."""
    groups: dict[tuple[str, int, str], list[int]] = {}
    rest = []
    for name in names:
        match = _NUMBERED.match(name)
        if match is None or "{" in name or "}" in name:
            rest.append(name)
            continue
        prefix, digits, suffix = match.groups()
        groups.setdefault((prefix, len(digits), suffix), []).append(int(digits))
    runs = []
    for (prefix, width, suffix), numbers in groups.items():
        template = f"{prefix}{{:0{width}d}}{suffix}"
        numbers.sort()
        start = 0
        for k in range(1, len(numbers) + 1):
            if k == len(numbers) or numbers[k] != numbers[k - 1] + 1:
                if k - start >= 2:
                    runs.append([template, numbers[start], k - start])
                else:
                    rest.append(template.format(numbers[start]))
                start = k
    runs.sort()
    return runs, sorted(rest)


def _expand(entry: dict) -> list[str]:
    """A folder's names in index order: its runs' names, then the others."""
    names = [t.format(first + k) for t, first, count in entry.get("runs", ())
             for k in range(count)]
    return names + list(entry.get("names", ()))


@functools.lru_cache(maxsize=1024)  # a handful of templates, met once per folder at start-up
def _template_ends(template: str) -> tuple[str, str]:
    return template.split("{", 1)[0], template.rsplit("}", 1)[-1]


class PackHeader:
    """The first line of a pack's index: its folders, their files, the pack's size."""

    def __init__(self, path: str, line: dict, index_at: int, index_size: int):
        if line.get("format") != FORMAT or line.get("version") != VERSION:
            raise PackError(f"{path}: not a frame pack of version {VERSION} (its index says "
                            f"{line.get('format')!r} version {line.get('version')!r})")
        self.path, self.size, self.dirs = path, line["size"], line["dirs"]
        self.index_at, self.index_size = index_at, index_size
        self._lower: dict[str, str] | None = None

    def find_dir(self, folder: str) -> str | None:
        """The pack's name of `folder` (as given, else matched ignoring case), or None."""
        if folder in self.dirs:
            return folder
        if self._lower is None:
            self._lower = {d.lower(): d for d in self.dirs}
        return self._lower.get(folder.lower())

    def names(self, folder: str) -> list[str]:
        return _expand(self.dirs.get(folder, {}))

    def count(self, folder: str, template: str) -> int:
        """Files of `folder` whose names start and end as `template`'s do (what a loose
        folder's count is: `FrameIndex.count`)."""
        entry = self.dirs.get(folder)
        if entry is None:
            return 0
        prefix, suffix = _template_ends(template)
        n = 0
        for run_template, first, count in entry.get("runs", ()):
            run_prefix, run_suffix = _template_ends(run_template)
            if run_prefix.startswith(prefix) and run_suffix.endswith(suffix):
                n += count  # every name of the run matches
            else:
                n += sum(1 for k in range(count) if _matches(
                    run_template.format(first + k), prefix, suffix))
        return n + sum(1 for name in entry.get("names", ()) if _matches(name, prefix, suffix))

    def has(self, folder: str, name: str) -> bool:
        entry = self.dirs.get(folder)
        return entry is not None and _Folder(entry).position(name) is not None


class _Folder:
    """A folder's entry of the index, made quick to look names up in: a name's position in
    the folder's table, from its number (no list of names built)."""

    def __init__(self, entry: dict):
        self.runs = []  # (prefix, suffix, digits, first, count, position of the first)
        at = 0
        for template, first, count in entry.get("runs", ()):
            prefix, suffix = _template_ends(template)
            digits = len(template.format(first)) - len(prefix) - len(suffix)
            self.runs.append((prefix, suffix, digits, first, count, at))
            at += count
        self.names = {name: at + k for k, name in enumerate(entry.get("names", ()))}

    def position(self, name: str) -> int | None:
        for prefix, suffix, digits, first, count, at in self.runs:
            number = name[len(prefix):len(name) - len(suffix)]
            if (len(number) == digits and number.isdigit() and name.startswith(prefix)
                    and name.endswith(suffix) and first <= int(number) < first + count):
                return at + int(number) - first
        return self.names.get(name)


def _matches(name: str, prefix: str, suffix: str) -> bool:
    return name.startswith(prefix) and name.endswith(suffix)


_INDEX_START = INDEX_DIR.encode() + b"/"


def _first_member(fd: int, path: str, head: bytes) -> tuple[int, int]:
    """(data offset, size) of the pack's first member, which must be its index."""
    # the usual header, read by hand (tarfile's parser takes several times as long, and a
    # dataset reads one per video at start-up): a regular file under .pack-index/, in ustar
    if (head.startswith(_INDEX_START) and head[156:157] == tarfile.REGTYPE
            and head[257:262] == b"ustar" and head[124:135].isdigit()
            and b"8" not in head[124:135] and b"9" not in head[124:135]):
        return BLOCK, int(head[124:135], 8)
    try:
        info = tarfile.TarInfo.frombuf(head[:BLOCK], _ENCODING, _ERRORS)
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME):
            # a long index name: let tarfile read the extended header
            with open(os.dup(fd), "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
                info = tar.next()
            at = info.offset_data
        else:
            at = BLOCK
    except (tarfile.TarError, AttributeError) as err:
        raise PackError(f"{path}: not a frame pack (no tar header: {err})") from None
    if info is None or not info.name.startswith(INDEX_DIR + "/"):
        raise PackError(f"{path}: not a frame pack (its first member is "
                        f"{getattr(info, 'name', None)!r}, not the index {INDEX_DIR}/...)")
    return at, info.size


def _read_header(fd: int, path: str, head: int = HEAD) -> tuple[PackHeader, bytes | None]:
    """The header of the open pack `fd` (read `head` bytes at first), and the rest of its index
    where that read reached its end (else None)."""
    head = os.pread(fd, head, 0)
    at, size = _first_member(fd, path, head)
    index = head[at:at + size]
    end = index.find(b"\n")
    while end < 0 and len(index) < size:  # a first line longer than HEAD
        more = os.pread(fd, min(size - len(index), 1 << 20), at + len(index))
        if not more:
            break
        index += more
        end = index.find(b"\n")
    if end < 0:
        raise PackError(f"{path}: the pack's index is cut short")
    try:
        line = json.loads(index[:end])
        header = PackHeader(path, line, at, size)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise PackError(f"{path}: the pack's index is damaged ({err})") from None
    return header, index[end + 1:] if len(index) == size else None


def read_header(path: str | Path) -> PackHeader:
    """A pack's header (its folders and file names) alone: one open and one small read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _read_header(fd, str(path))[0]
    finally:
        os.close(fd)


def complete(path: str | Path) -> bool:
    """Whether `path` is a whole pack: a readable header and the size it records."""
    try:
        return read_header(path).size == os.stat(path).st_size
    except OSError:
        return False


# ---------------------------------------------------------------------------- writing

def index_name(key: str) -> str:
    return f"{INDEX_DIR}/{key}.jsonl"


def _member_info(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _tar_header(info: tarfile.TarInfo) -> bytes:
    # PAX: a plain ustar header unless a name needs an extended one (GNU and BSD tar read both)
    return info.tobuf(tarfile.PAX_FORMAT, _ENCODING, _ERRORS)


def _index_text(files: list[tuple[str, int]], offsets: dict[str, int], total: int) -> bytes:
    """The JSON-lines index of `files` (member name, size) at `offsets`."""
    by_dir: dict[str, list[str]] = {}
    sizes = dict(files)
    for name, _ in files:
        folder, _, base = name.rpartition("/")
        by_dir.setdefault(folder, []).append(base)
    dirs, lines = {}, []
    for folder, names in by_dir.items():
        runs, rest = _runs(names)
        entry = {"runs": runs} if runs else {}
        if rest:
            entry["names"] = rest
        dirs[folder] = entry
        members = [f"{folder}/{n}" if folder else n for n in _expand(entry)]
        lines.append(json.dumps({"dir": folder, "at": [offsets[m] for m in members],
                                 "sizes": [sizes[m] for m in members]}, separators=(",", ":")))
    first = json.dumps({"format": FORMAT, "version": VERSION, "size": total,
                        "files": len(files), "dirs": dirs}, separators=(",", ":"))
    return "\n".join([first, *lines, ""]).encode()


def member_order(name: str) -> tuple:
    """Where a file goes in a pack: by the number its name ends in (frame000012.jpg, img_00012
    .jpg, flow_x_00012.jpg: 12), then by name; files without a number last."""
    match = _NUMBERED.match(name.rpartition("/")[2])
    return (0, int(match.group(2)), name) if match else (1, 0, name)


def write_pack(dest: str | Path, files: Sequence[tuple[str, str | Path]],
               key: str) -> tuple[int, int]:
    """Write the pack `dest` of `files` (member name, source file; in `member_order`), its
    index first; written to `dest.partial` and renamed when complete. Returns its size and
    the files' bytes."""
    dest = Path(dest)
    files = sorted(((name, Path(source)) for name, source in files),
                   key=lambda f: member_order(f[0]))
    names = [name for name, _ in files]
    if len(set(names)) != len(names):
        raise ValueError(f"{dest}: two files with one name in a pack")
    stats = [source.stat() for _, source in files]
    headers = [_tar_header(_member_info(name, st.st_size, st.st_mtime))
               for name, st in zip(names, stats)]
    index_info = _member_info(index_name(key), 0, max((s.st_mtime for s in stats), default=0))
    # The index holds the offsets, which follow the index: lay out until its length settles.
    text = b""
    for _ in range(16):
        index_info.size = len(text)
        at = len(_tar_header(index_info)) + _padded(len(text))
        offsets = {}
        for name, header, st in zip(names, headers, stats):
            at += len(header)
            offsets[name] = at
            at += _padded(st.st_size)
        total = at + 2 * BLOCK  # the end-of-archive marker: two zero blocks
        new = _index_text([(n, s.st_size) for n, s in zip(names, stats)], offsets, total)
        if len(new) == len(text) and new == text:
            break
        text = new
    else:  # pragma: no cover - the lengths settle within a few rounds
        raise RuntimeError(f"{dest}: the index's layout did not settle")
    partial = dest.with_name(dest.name + PARTIAL)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(partial, "wb") as out:
            out.write(_tar_header(index_info))
            out.write(text.ljust(_padded(len(text)), b"\0"))
            for (name, source), header, st in zip(files, headers, stats):
                out.write(header)
                with open(source, "rb") as f:
                    data = f.read()
                if len(data) != st.st_size or out.tell() != offsets[name]:
                    raise OSError(f"{source} changed while it was packed")
                out.write(data.ljust(_padded(len(data)), b"\0"))
            out.write(b"\0" * (2 * BLOCK))
            if out.tell() != total:  # pragma: no cover - a bug in the layout above
                raise RuntimeError(f"{dest}: wrote {out.tell()} bytes, laid out {total}")
        os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return total, sum(st.st_size for st in stats)


# ---------------------------------------------------------------------------- reading

class PackReader:
    """A pack open for reading: its descriptor, size and where each file lies. The datasets
    go through `read_member`, which keeps one per pack in each process."""

    def __init__(self, path: str | Path):
        path = str(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(self.fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(path)
            self.file_size = st.st_size
            header, rest = _read_header(self.fd, path, READER_HEAD)
            self.expected_size = header.size
            if rest is None:  # the index is longer than the first read: read all of it
                rest = os.pread(self.fd, header.index_size, header.index_at)
                rest = rest[rest.find(b"\n") + 1:]
            # folder -> (its names' positions, their data offsets, their sizes)
            self.folders: dict[str, tuple[_Folder, list[int], list[int]]] = {}
            for text in rest.splitlines():
                table = json.loads(text)
                entry = header.dirs[table["dir"]]
                if len(table["at"]) != len(table["sizes"]) or len(table["at"]) != sum(
                        count for _, _, count in entry.get("runs", ())) + len(
                        entry.get("names", ())):
                    raise ValueError(f"folder {table['dir']}: a table of another length")
                self.folders[table["dir"]] = (_Folder(entry), table["at"], table["sizes"])
        except (ValueError, KeyError, TypeError) as err:
            os.close(self.fd)
            raise PackError(f"{path}: the pack's index is damaged ({err})") from None
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> "PackReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def place(self, member: str) -> tuple[int, int] | None:
        """(byte offset, size) of `member`'s data, or None when the pack has no such file."""
        folder, _, name = member.rpartition("/")
        return self.place_in(folder, name)

    def place_in(self, folder: str, name: str) -> tuple[int, int] | None:
        """`place` of the file `name` of `folder` (in the pack)."""
        found = self.folders.get(folder)
        k = None if found is None else found[0].position(name)
        return None if k is None else (found[1][k], found[2][k])

    def read_many(self, wanted: Iterable[tuple[str, str, str]]) -> dict[str, bytes]:
        """{key: bytes} of the `wanted` files (folder in the pack, file name, key) that lie whole
        inside the file, in as few positioned reads as their places allow: files less than
        `GAP` bytes apart are read in one go (a clip's frames lie in one stretch, so 21 reads
        become one). A file that cannot be read is left out, for `read` to name its fault."""
        places = sorted((*place, key) for folder, name, key in wanted
                        if (place := self.place_in(folder, name)) is not None
                        and place[0] + place[1] <= self.file_size)
        read, k = {}, 0
        while k < len(places):
            start, end, j = places[k][0], places[k][0] + places[k][1], k + 1
            while (j < len(places) and places[j][0] - end <= GAP
                   and places[j][0] + places[j][1] - start <= SPAN):
                end, j = max(end, places[j][0] + places[j][1]), j + 1
            data = os.pread(self.fd, end - start, start)
            if len(data) == end - start:
                for at, size, key in places[k:j]:
                    read[key] = data[at - start:at - start + size]
            k = j
        return read

    def read(self, member: str) -> bytes:
        """The bytes of `member` (its name in the pack), one positioned read."""
        place = self.place(member)
        if place is None:
            raise PackError(f"no file {member} in the pack")
        at, size = place
        if at + size > self.file_size:
            raise PackError(f"the pack is truncated: {self.file_size} of its "
                            f"{self.expected_size} bytes, and this file lies at bytes {at} to "
                            f"{at + size}")
        data = os.pread(self.fd, size, at)
        if len(data) != size:
            raise PackError(f"the pack is truncated (read {len(data)} of the file's {size} "
                            f"bytes at {at})")
        return data


_max_open = 64
_lock = threading.Lock()
_open: OrderedDict[str, PackReader] = OrderedDict()
_folders: set[str] = set()  # loose folders whose names end in .tar
_owner = os.getpid()
_ahead = threading.local()  # .frames: {path: bytes} read ahead by this thread (`read_ahead`)


def max_open() -> int:
    return _max_open


def set_max_open(n: int) -> None:
    """At most `n` packs open at once in each process (least recently used closed first)."""
    global _max_open
    if n < 1:
        raise ValueError(f"at least one pack must be open at a time, got {n}")
    with _lock:
        _max_open = n
        _evict()


def _evict() -> None:
    while len(_open) > _max_open:
        _, handle = _open.popitem(last=False)
        os.close(handle.fd)


def _forked() -> None:
    """In a process forked after opening packs: forget the parent's table (and its lock, which
    another thread may have held at the fork) and close the inherited descriptors."""
    global _lock, _owner
    _lock = threading.Lock()
    for handle in _open.values():
        try:
            os.close(handle.fd)
        except OSError:
            pass
    _open.clear()
    _ahead.frames = {}
    _owner = os.getpid()


def split(path: str) -> tuple[str, str] | None:
    """`<...>.tar/<member>` -> (pack, member), or None for a path through no pack."""
    at = path.find(MARK)
    return None if at < 0 else (path[:at + len(SUFFIX)], path[at + len(MARK):])


def _handle(pack: str) -> PackReader | None:
    """This process's reader of `pack` (opened now if need be; call with `_lock` held), or
    None when `pack` is a folder."""
    handle = _open.get(pack)
    if handle is None:
        try:
            handle = PackReader(pack)
        except IsADirectoryError:
            _folders.add(pack)
            return None
        _open[pack] = handle
        _evict()
    else:
        _open.move_to_end(pack)
    return handle


def read_member(path: str) -> bytes | None:
    """The bytes of `<pack>.tar/<member>`: read ahead (`read_ahead`), else one positioned
    read; None when `<pack>.tar` is a folder (a loose tree may name one so). A damaged pack or
    a missing file: `PackError`."""
    ahead = getattr(_ahead, "frames", None)
    if ahead:  # first: a clip's files are taken from memory at the cost of a dict look-up
        data = ahead.pop(path, None)
        if data is not None:
            return data
    parts = split(path)
    if parts is None:
        return None
    pack, member = parts
    if pack in _folders:
        return None
    if os.getpid() != _owner:
        _forked()
    with _lock:
        handle = _handle(pack)
        return None if handle is None else handle.read(member)


def read_ahead(folders: Iterable[tuple[str, Sequence[str]]]) -> None:
    """Read ahead the files `names` of each packed folder (`<pack>.tar/<folder in it>`, a
    clip's frames): each pack's in as few positioned reads as their places allow
    (`PackReader.read_many`). `read_member` then takes them from memory, once, by their paths
    (`os.path.join(folder, name)`). What this thread read ahead before is dropped, so at most
    one clip's bytes are held. Faults are left for `read_member` to name, file by file."""
    wanted: dict[str, list[tuple[str, str, str]]] = {}
    for folder, names in folders:
        parts = split(folder)
        if parts is not None and parts[0] not in _folders:
            wanted.setdefault(parts[0], []).extend(
                (parts[1], name, os.path.join(folder, name)) for name in names)
    if os.getpid() != _owner:
        _forked()
    frames = {}
    for pack, files in wanted.items():
        try:
            with _lock:
                handle = _handle(pack)
                if handle is not None:
                    frames.update(handle.read_many(files))
        except OSError:  # a damaged pack: read_member names it
            continue
    _ahead.frames = frames


def open_count() -> int:
    """Packs open in this process now."""
    return len(_open) if os.getpid() == _owner else 0


def close_all() -> None:
    _ahead.frames = {}
    with _lock:
        while _open:
            os.close(_open.popitem()[1].fd)
