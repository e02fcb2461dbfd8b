"""Reading files from photo folders without ever blocking: regular files only.

Why: a folder can hold a named pipe (FIFO), a socket or a device node under an image's name. A plain
``open()`` of a FIFO waits for a writer forever and reading /dev/zero never ends, so one such entry
would hang an ingest. The scan skips them (:func:`not_regular_reason`), and every read goes through
:func:`open_regular`, which also refuses a file swapped for one of them after the scan. No numpy or
Pillow here: the scan imports this.
"""

from __future__ import annotations

import errno
import os
import stat
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


class NotRegularFile(OSError):
    """A FIFO, socket or device where an image file was expected; ``str(err)`` is the reason."""


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
    the open descriptor (the path may have been swapped since). Raises :class:`NotRegularFile`,
    :class:`IsADirectoryError` or the OS's own error.
    """
    _refuse_unless_regular(os.stat(path).st_mode, path)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        _refuse_unless_regular(os.fstat(fd).st_mode, path)
        os.set_blocking(fd, True)  # a regular file: plain reads from here on
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
