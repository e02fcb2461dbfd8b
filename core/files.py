"""Reading files from photo folders without ever blocking: regular files only.

Why: a folder can hold a named pipe (FIFO), a socket or a device node under an image's name. A plain
``open()`` of a FIFO waits for a writer forever and reading /dev/zero never ends, so one such entry
would hang an ingest. The scan skips them (:func:`not_regular_reason`), and every read goes through
:func:`open_regular`, which also refuses a file swapped for one of them after the scan. No numpy or
Pillow here: the scan imports this.

A file served to the web is also confined (:func:`confined`): the descriptor actually opened must lie
under the folder it was ingested from, so a stored file swapped for a symlink to anything else after
ingest is refused at open time, with no window between the check and the read.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import BinaryIO

# O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer; O_NOCTTY: a terminal
# never becomes this process's controlling one
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


_confined_to: ContextVar[str | None] = ContextVar("confined_to", default=None)


class NotRegularFile(OSError):
    """A FIFO, socket or device where an image file was expected; ``str(err)`` is the reason."""


class OutsideRoot(NotRegularFile):
    """A file that resolves outside the folder it must be read from (refused like a FIFO: never read)."""


@contextmanager
def confined(root: str) -> Iterator[None]:
    """Within this block (this thread), :func:`open_regular` refuses any file whose open descriptor does
    not lie under ``root`` (or is not ``root`` itself, a single-file root), symlinks resolved."""
    token = _confined_to.set(os.path.realpath(root))
    try:
        yield
    finally:
        _confined_to.reset(token)


def _refuse_unless_inside(fd: int, path: str | os.PathLike[str], root: str) -> None:
    """Raise :class:`OutsideRoot` unless what ``fd`` has open is under ``root`` (a real path): the name
    the kernel gives the descriptor, checked to be that very file (same device and inode)."""
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: resolve the name, then the inode check below ties it to the descriptor
        real = os.path.realpath(path)
    opened = os.fstat(fd)
    try:
        named = os.stat(real)
    except OSError:  # deleted since it was opened ("... (deleted)"), or renamed away
        named = None
    same = named is not None and (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)
    if not same or not (real == root or real.startswith(os.path.join(root, ""))):
        raise OutsideRoot(f"not inside its library folder {root} (a symlink or a moved file?): not served")


def not_regular_reason(mode: int) -> str | None:
    """Why a file with this ``st_mode`` is never read, or None for a regular file or a folder."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "an unknown kind of file")
    return f"not a regular file: {kind}"


def _refuse_unless_regular(mode: int, path: str | os.PathLike[str]) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
    if reason := not_regular_reason(mode):
        raise NotRegularFile(reason)


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file; never blocks.

    Checked before opening (a device is never opened: opening some has side effects) and again on
    the open descriptor (the path may have been swapped since); inside :func:`confined`, the descriptor
    must also lie under its root. Raises :class:`NotRegularFile` (:class:`OutsideRoot`),
    :class:`IsADirectoryError` or the OS's own error.
    """
    _refuse_unless_regular(os.stat(path).st_mode, path)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        _refuse_unless_regular(os.fstat(fd).st_mode, path)
        if (root := _confined_to.get()) is not None:
            _refuse_unless_inside(fd, path, root)
        os.set_blocking(fd, True)  # a regular file: plain reads from here on
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
