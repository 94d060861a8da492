"""Writes that are all or nothing: a crash leaves the old file or folder, or none, never half of a new one.

Weights, caches and reports are read by other programs (pipelines, ComfyUI, later
runs); a truncated file that still parses would be worse than a missing one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tinyae.errors import ExportError


def _shareable_mode(directory: bool) -> int:
    """0777/0666 minus the umask: mkdtemp/mkstemp's 0700/0600 would make outputs private to their writer."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextmanager
def atomic_folder(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder that becomes `target` only if the block finishes."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise ExportError(f"'{target}' already exists; pass overwrite=True (--overwrite) or choose another folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, _shareable_mode(directory=True))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_file(path: str | Path, write: Callable[[Path], object], fsync: bool = False) -> None:
    """Call `write(tmp)` on a temporary sibling, then rename it to `path` (after fsync if asked)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, _shareable_mode(directory=False))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
