"""Writes that never leave a half file: a temp file or folder beside the target, then a rename.

- atomic_path / write_text_atomic / write_bytes_atomic: one file.
- staging_folder + move_into: several files staged in a folder of the target directory, then renamed into it one by
  one (each appears whole or not at all; callers order the renames so that the manifest comes last).
- publish_folder: a whole staged folder renamed to its final name (a cache entry)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temp path beside `target`; on success it is renamed over `target`, on error removed. The file gets
    `mode`, or that of a new file (0666 less the umask): mkstemp makes 0600, and a manifest or report is as
    readable as any other file."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, new_file_mode() if mode is None else mode)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(target: str | os.PathLike, text: str, mode: int | None = None) -> None:
    with atomic_path(target, mode) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(target: str | os.PathLike, data: bytes, mode: int | None = None) -> None:
    with atomic_path(target, mode) as tmp:
        tmp.write_bytes(data)


@contextmanager
def staging_folder(parent: str | os.PathLike, prefix: str = ".staging-") -> Iterator[Path]:
    """A fresh folder in `parent` (the same file system, so that its files rename into place atomically), removed
    on exit with whatever is left in it. `parent` is created if missing."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_into(staging: Path, target: Path, names: Iterable[str]) -> None:
    """Rename each staged file `name` (a path relative to `staging`) to the same place under `target`, in order."""
    for name in names:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, target / name)


def publish_folder(staging: Path, entry: Path) -> None:
    """Rename a finished staging folder to `entry`. An entry already there (a stale one, or one a concurrent
    process just published) is moved aside and removed first; if another one lands in between, that one stays."""
    if entry.exists():
        aside = Path(tempfile.mkdtemp(prefix=".stale-", dir=entry.parent))
        try:
            os.rename(entry, aside / "entry")
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    try:
        os.rename(staging, entry)
    except OSError:
        if not entry.is_dir():
            raise


def new_file_mode() -> int:
    """The mode open() gives a new file here: 0666 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
