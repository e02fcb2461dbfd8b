"""Find the image files under the given roots, with what incremental ingest compares (size, mtime).

Nothing is opened here. Only regular files are taken: a FIFO, socket or device under an image's name
is reported (opening a FIFO would wait forever for a writer). A symlink whose target lies outside
every root is reported too unless ``follow_outside``: a folder of photos should not be a way to
read /etc/passwd or another user's files into a shared library.

What is *not* there is only believed when it is proven (:class:`Absence`, :func:`root_problem`): a
folder that cannot be read right now (an unmounted disk, a NAS not up yet, EACCES, ESTALE, EIO) must
never read as "every photo in it was deleted".
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from imgsearch.core.files import not_regular_reason

# photos as cameras and phones write them; the RAW ones are imgsearch.core.decode.RAW_EXTENSIONS (not imported:
# scanning stays free of numpy and Pillow)
EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".hif", ".avif"}
    | {".cr2", ".cr3", ".nef", ".arw", ".dng", ".orf", ".rw2", ".raf"}
)
OUTSIDE = "symlink points outside the ingested folders (--follow-outside reads it)"


class FileInfo(NamedTuple):  # a tuple: 100,000 of them are made by every sync of a library that size
    path: str  # absolute; os.fsdecode'd, so undecodable bytes survive as surrogates
    root: str
    category: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Failure:
    path: str
    reason: str


@dataclass
class ScanResult:
    files: list[FileInfo] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def walk_error(self, err: OSError) -> None:
        self.failures.append(Failure(os.fsdecode(err.filename or "?"), f"cannot list folder: {err.strerror}"))


def root_problem(root: str) -> str:
    """Why the folder ``root`` cannot be listed now ("" when it can, or when it is a single file)."""
    try:
        with os.scandir(root):
            return ""
    except NotADirectoryError:
        return ""
    except FileNotFoundError:
        return "missing (unmounted?)"
    except OSError as err:
        return f"cannot list it: {err.strerror or err}"


class Absence:
    """Proof that a path is gone: its own lstat says ENOENT *and* the nearest folder above it that exists
    could be listed and lacks the next name. Any other answer (EACCES, ESTALE, EIO, ENOTDIR, a folder
    that cannot be listed) proves nothing. Listings are kept for the life of the object (one prune pass),
    so the rows of one folder cost one listing."""

    def __init__(self) -> None:
        self._listings: dict[str, frozenset[str] | OSError] = {}  # folder -> its names, or why it cannot be listed

    def _names(self, folder: str) -> frozenset[str]:
        if folder not in self._listings:
            try:
                self._listings[folder] = frozenset(os.listdir(folder))
            except OSError as err:
                self._listings[folder] = err
        found = self._listings[folder]
        if isinstance(found, OSError):
            raise found
        return found

    def proven(self, path: str) -> bool:
        try:
            os.lstat(path)
            return False
        except FileNotFoundError:
            pass
        except OSError:
            return False
        child = path
        while (folder := os.path.dirname(child)) != child:
            try:
                return os.path.basename(child) not in self._names(folder)
            except FileNotFoundError:  # the folder is gone too: its own parent holds the proof
                child = folder
            except OSError:
                return False
        return False

    def present(self, path: str) -> bool:
        """What :func:`ingest.plan.plan` asks: not proven gone."""
        return not self.proven(path)


def is_image_name(name: str) -> bool:
    dot = name.rfind(".")  # os.path.splitext's extension, for a name not starting with a dot
    return dot > 0 and not name.startswith(".") and name[dot:].lower() in EXTENSIONS


def _category(root: str, dirpath: str) -> str:
    rel = os.path.relpath(dirpath, root)
    if rel == ".":
        return os.path.basename(root.rstrip(os.sep)) or root
    return rel.split(os.sep, 1)[0]


def _leads_outside(link: str, inside: tuple[str, ...] | None) -> bool:
    """Whether the symlink ``link``'s target is in none of the folders ``inside`` (None: no limit)."""
    return inside is not None and not os.path.join(os.path.realpath(link), "").startswith(inside)


def _points_outside(path: str, inside: tuple[str, ...] | None) -> bool:
    """Whether ``path`` is a symlink whose target is in none of the folders ``inside`` (None: no limit)."""
    return inside is not None and os.path.islink(path) and _leads_outside(path, inside)


def _stat_file(path: str, root: str, category: str, result: ScanResult, inside: tuple[str, ...] | None) -> None:
    """One system call for a file that is no symlink (its ``lstat``); a symlink's target is stat-ed after."""
    link = False
    try:
        st = os.lstat(path)
        if link := stat.S_ISLNK(st.st_mode):
            st = os.stat(path)
    except FileNotFoundError:
        reason = "broken symlink (its target does not exist)" if link else "file vanished during scan"
        result.failures.append(Failure(path, reason))
        return
    except OSError as err:
        loop = err.errno == errno.ELOOP
        reason = "symlink loop (the link points back to itself)" if loop else f"cannot stat: {err.strerror}"
        result.failures.append(Failure(path, reason))
        return
    if stat.S_ISDIR(st.st_mode):
        return
    reason = not_regular_reason(st.st_mode) or (OUTSIDE if link and _leads_outside(path, inside) else None)
    if reason:
        result.failures.append(Failure(path, reason))
        return
    result.files.append(FileInfo(path, root, category, st.st_size, st.st_mtime_ns))


def scan(roots: Iterable[str], category: str | None = None, follow_outside: bool = False) -> ScanResult:
    """Walk ``roots`` recursively (following symlinks, each real directory once, so loops end).

    Skips hidden files and folders (``.*``, which includes macOS ``._*`` twins). Category is the
    first folder under the root; files directly in the root take the root's own name; ``category``
    overrides both. A root may also be a single image file (category: its folder's name; read
    wherever it points, as it was named). Non-regular files and, unless ``follow_outside``, symlinks
    (to files or folders) that lead out of every root are failures, each reported once.
    """
    absolute = [os.path.abspath(given) for given in roots]
    inside = None if follow_outside else tuple(os.path.join(os.path.realpath(r), "") for r in absolute)
    result = ScanResult()
    seen_dirs: set[tuple[int, int]] = set()
    for root in absolute:
        if os.path.lexists(root) and not os.path.isdir(root):  # a file, or a FIFO etc. to report
            parent = os.path.dirname(root)
            _stat_file(root, parent, category or os.path.basename(parent), result, None)
            continue

        for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=result.walk_error):
            try:
                st = os.stat(dirpath)
            except OSError:
                dirnames[:] = []
                continue
            if (st.st_dev, st.st_ino) in seen_dirs:  # symlink loop or a folder reached twice
                dirnames[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            subdirs = sorted(d for d in dirnames if not d.startswith("."))
            dirnames[:] = []
            for name in subdirs:
                if _points_outside(sub := os.path.join(dirpath, name), inside):
                    result.failures.append(Failure(sub, OUTSIDE))
                else:
                    dirnames.append(name)
            cat = category or _category(root, dirpath)
            for name in sorted(filenames):
                if is_image_name(name):
                    _stat_file(os.path.join(dirpath, name), root, cat, result, inside)
    return result
