"""Output files: written whole or not at all, and one writer at a time per output folder."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["content_print", "is_stream", "lock_folder", "only_writer", "replaced_path", "replaced_whole",
           "save_figure", "write_whole", "writes_to_stdout"]

# replaced_path's temporary files: "<name>.<pid>-<8 hex digits>.tmp<name's suffix>"
_TEMPORARY = re.compile(r".+\.\d+-[0-9a-f]{8}\.tmp(\.[^.]*)?")


def _own_stream(path: str | Path) -> int | None:
    """The file descriptor ``path`` names in this process (``/dev/stdout``: 1, ``/dev/fd/N``: N), else None."""
    own = re.fullmatch(r"/dev/std(out|err)|/(?:dev/fd|proc/self/fd)/(\d+)", os.path.abspath(path))
    if not own:
        return None
    return {"out": 1, "err": 2}[own.group(1)] if own.group(1) else int(own.group(2))


def is_stream(path: str | Path) -> bool:
    """Whether :func:`write_whole` writes into ``path`` (this process's output, a pipe, a device: what it
    writes each time follows what it wrote before) instead of replacing a file."""
    given = os.path.abspath(path)
    return _own_stream(given) is not None or (os.path.exists(given) and not os.path.isfile(given))


def writes_to_stdout(path: str | Path) -> bool:
    """Whether ``path`` names this process's standard output."""
    return _own_stream(path) == 1


def write_whole(path: str | Path, text: Iterable[str]) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file beside the file a symbolic link names, renamed
    over it, so a reader or a kill mid-write never leaves a partial file. A stream is written into instead
    (renaming would replace it): this process's own output (``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N``),
    at its place, whatever it is redirected to; any other name that is not a regular file (a pipe, a device),
    appended to."""
    given = os.path.abspath(path)
    fd = _own_stream(given)
    if fd is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        with os.fdopen(os.dup(fd), "w", encoding="utf-8") as f:  # the same open file, from where it is
            f.writelines(text)
        return
    if is_stream(given):
        with open(given, "a", encoding="utf-8") as f:
            f.writelines(text)
        return
    with replaced_whole(Path(os.path.realpath(given))) as f:
        f.writelines(text)


def save_figure(figure: Any, path: str | Path, **options: Any) -> None:
    """Save a matplotlib ``figure`` to ``path`` in the format its suffix names, whole or not at all, as
    :func:`write_whole` writes text: a picture interrupted mid-write leaves the one before it in place."""
    given = os.path.abspath(path)
    if is_stream(given):
        figure.savefig(given, **options)
        return
    suffix = Path(given).suffix[1:].lower()
    with replaced_whole(Path(os.path.realpath(given)), binary=True) as f:
        figure.savefig(f, format=suffix or None, **options)


@contextmanager
def replaced_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the ``with`` block to write a file at, which replaces ``path`` when
    the block ends, on disk first (fsynced, then renamed over it): a reader or a kill mid-write sees the old file
    or the new one, never a part, and of writers of one path at once each replaces it whole. Its name ends in
    ``path``'s suffix, so a writer that picks the format by the suffix (FFmpeg) picks the same. A block that
    raises leaves ``path`` as it was and removes the temporary file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")  # (_TEMPORARY)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if str(tmp) not in str(err.filename):
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err  # the file asked for, not its stand-in
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def replaced_whole(path: Path, binary: bool = False) -> Iterator[IO]:
    """A new file for the ``with`` block to write, which replaces ``path`` when the block ends, whole (see
    :func:`replaced_path`)."""
    with replaced_path(path) as tmp, open(tmp, "xb") if binary else open(tmp, "x", encoding="utf-8") as f:
        yield f
        f.flush()


def lock_folder(folder: Path) -> IO[str] | None:
    """Take ``folder``'s lock (an advisory ``flock`` on ``folder/.lock``): the open lock file, which releases it
    when closed (or when the process ends, however it ends), or None when another process holds it. The
    holder is the folder's only writer, so the temporary files of :func:`replaced_whole` found there are
    those of a writer killed mid-write (a checkpoint's can be large): they are removed. Without ``fcntl``
    (not a POSIX system) nothing is locked, or removed."""
    handle = open(folder / ".lock", "a")  # noqa: SIM115 - closed by the caller, which releases the lock
    try:
        import fcntl
    except ImportError:
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    for entry in os.scandir(folder):
        if _TEMPORARY.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
    return handle


def content_print(path: str | Path) -> list | None:
    """What tells a file's contents apart without reading it all (a video, a model's weights): its size
    and a hash of its first, middle and last 16 KiB; None when it cannot be read."""
    chunk = 16384
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            digest = hashlib.sha256()
            for start in sorted({0, max(size // 2 - chunk // 2, 0), max(size - chunk, 0)}):
                f.seek(start)
                digest.update(f.read(chunk))
            return [size, digest.hexdigest()]
    except OSError:
        return None


@contextmanager
def only_writer(folder: Path, refusal: str) -> Iterator[None]:
    """Hold ``folder``'s lock (:func:`lock_folder`) for the ``with`` block; ``ValueError(refusal)`` when another
    process holds it."""
    handle = lock_folder(folder)
    if handle is None:
        raise ValueError(refusal)
    with handle:
        yield
