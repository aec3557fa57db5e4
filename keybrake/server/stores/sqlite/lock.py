"""One server per SQLite file: an exclusive lock on the database file itself."""

from __future__ import annotations

import os
import sys

from keybrake.server.stores.base import (
    StoreUnavailable,
)


class _ServeLock:
    """An exclusive, non-blocking lock on the database file itself, held while serving.

    On POSIX it is a ``flock`` on a descriptor of the file, so it follows the file (its
    inode), not the name it was opened by: a symlink or a hard link to a served database
    meets the same lock. On Windows it is a lock on ``<real path>.serve-lock``, which covers
    symlinks but not hard links.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def claim(cls, database: str) -> _ServeLock:
        """
        Raises:
            StoreUnavailable: another process serves this file (or the lock can't be made).
        """
        path = _lock_path(database)
        try:
            # Made here if new: SQLite takes an empty file for an empty database.
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreUnavailable(f"can't open {path}: {exc}") from exc
        try:
            _lock_file(fd)
        except OSError:
            os.close(fd)
            raise StoreUnavailable(
                f"another keybrake server is using {database} (the file is locked);"
                " one server per SQLite file, or use PostgreSQL for several"
            ) from None
        return cls(fd)

    def release(self) -> None:
        """Drop the lock; only once this store's SQLite connections are closed (see
        :func:`_lock_file`)."""
        os.close(self._fd)  # closing the descriptor releases the lock


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock_path(database: str) -> str:
        # Windows byte-range locks are mandatory: one on the database itself would block
        # SQLite's own reads, so the lock is on a file beside it, named by its real path.
        return os.path.realpath(database) + ".serve-lock"

    def _lock_file(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

else:
    import fcntl

    def _lock_path(database: str) -> str:
        return database

    def _lock_file(fd: int) -> None:
        # flock, not fcntl (POSIX) locks: POSIX locks belong to the process, so SQLite's
        # own byte-range locks in this process would merge with ours, and closing any
        # descriptor of the file drops all of them, which SQLite does whenever one of its
        # connections closes. A flock belongs to this open file alone, and on Linux never
        # meets SQLite's POSIX locks. The other way round, closing this descriptor drops the
        # process's POSIX locks on the file, SQLite's included: hence release() comes last.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
