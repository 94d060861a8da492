"""Writes that are all or nothing: a crash leaves the old file or folder, or none, never half of a new one.

Weights, caches and reports are read by other programs (pipelines, ComfyUI, later
runs); a truncated file that still parses would be worse than a missing one.

Temporaries are hidden, end in `.tmp` and name their writer (host and pid): ComfyUI lists
every file under its model folders whose extension is a model's (`.safetensors`, `.pth`,
...; hidden folders included: `recursive_search` and `filter_files_extensions` in
https://github.com/comfyanonymous/ComfyUI/blob/master/folder_paths.py) and diffusers loads
fixed file names, so neither picks one up; and since a `kill -9` runs no cleanup, every write into a
folder first removes the temporaries there whose writer is gone. Everything written gets
the umask's permissions (safetensors and mkstemp would make it private to its writer), and
a full disk or an unwritable folder becomes one sentence (DiskFullError, OutputError).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tinyae.errors import DiskFullError, ExportError, OutputError, TinyaeError
from tinyae.utils.locks import HOST, process_gone

logger = logging.getLogger(__name__)

# .<name>.tinyae-<host>-<pid>-<random or "old">.tmp
TEMPORARY = re.compile(r"^\.(?P<base>.+)\.tinyae-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<tag>\w+)\.tmp$")
LEGACY_TEMPORARY = re.compile(r"^\.tinyae-taesd\.tmp-\w+$")  # TAESD exports before writers were named
DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
NOT_WRITABLE = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                errno.EROFS: "read-only file system"}


def _shareable_mode(directory: bool) -> int:
    """0777/0666 minus the umask: mkdtemp/mkstemp's 0700/0600 would make outputs private to their writer."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def share(path: str | Path) -> None:
    """Give a file, or a folder and everything in it, the modes the umask allows (as `open` would)."""
    path = Path(path)
    if path.is_symlink():
        return
    if not path.is_dir():
        os.chmod(path, _shareable_mode(directory=False))
        return
    os.chmod(path, _shareable_mode(directory=True))
    for root, dirs, files in os.walk(path):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), _shareable_mode(directory=True))
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), _shareable_mode(directory=False))


# ---------------------------------------------------------------- temporaries


def temporary_prefix(name: str) -> str:
    """The start of a temporary's name for `name` (mkstemp/mkdtemp add a random part; end it with `.tmp`)."""
    return f".{name}.tinyae-{HOST}-{os.getpid()}-"


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove what killed tinyae writers left in `folder`, first putting back a folder caught mid-replacement."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if LEGACY_TEMPORARY.match(entry.name) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
            continue
        match = TEMPORARY.match(entry.name)
        if match is None or not process_gone(match["host"], int(match["pid"])):  # a live writer may still write
            continue
        path, target = Path(entry.path), Path(folder) / match["base"]
        if match["tag"] == "old" and not target.exists():
            os.replace(path, target)  # killed between moving the old folder aside and the new one in
            logger.warning("Restored %s, which an interrupted replacement had moved aside.", target)
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        logger.info("Removed %d temporaries left in %s by interrupted tinyae runs.", len(removed), folder)
    return removed


def final_path(path: str | Path) -> Path:
    """`path` with any temporary folder in it replaced by the folder it becomes (for messages)."""
    parts = [TEMPORARY.match(p)["base"] if TEMPORARY.match(p) else p for p in Path(path).parts]
    return Path(*parts)


# ---------------------------------------------------------------- failed writes in one sentence


def failed_write_errno(exc: BaseException) -> int | None:
    """The errno behind a failed write, also where libraries hide it.

    safetensors puts Rust's "(os error 28)" in its message; torch's zip writer reports only
    that it wrote short ("unexpected pos ...", "file write failed"), which on a local disk
    means it ran out of space (its message is kept as the cause).
    """
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    text = str(exc)
    if match := re.search(r"\(os error (\d+)\)", text):
        return int(match[1])
    if "unexpected pos" in text or "file write failed" in text:
        return errno.ENOSPC
    return None


def free_space(path: str | Path) -> str:
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MB free"
    except OSError:
        return "free space unknown"


@contextmanager
def reporting_write_errors(target: str | Path, kept: str = "nothing was replaced", what: str | None = None
                           ) -> Iterator[None]:
    """Turn a full disk or an unwritable folder met while writing `target` into one sentence.

    `kept` says what the user still has (the default suits writes that replace atomically);
    `what` names the write (default: the target's name).
    """
    try:
        yield
    except TinyaeError:
        raise
    except Exception as exc:
        code = failed_write_errno(exc)
        target = final_path(target)
        what = what or f"'{target.name}'"
        if code in DISK_FULL:
            raise DiskFullError(f"Disk full at '{target.parent}' ({DISK_FULL[code]}; {free_space(target)} now) "
                                f"while writing {what}: {kept}; free some space and run again.") from exc
        if code in NOT_WRITABLE:
            raise OutputError(f"Cannot write to '{target}': {NOT_WRITABLE[code]}; {kept}; choose another output "
                              "folder or make this one writable.") from exc
        raise


def check_writable(path: str | Path, option: str = "--out") -> None:
    """Fail at start, not after the work, if `path` (to be created or written into) cannot be written."""
    path = Path(path)
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"Cannot write to '{path}': '{folder}' is a file, not a folder; choose another {option}.")
    try:
        fd, probe = tempfile.mkstemp(prefix=temporary_prefix("write-check"), suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = NOT_WRITABLE.get(exc.errno) or DISK_FULL.get(exc.errno) or exc.strerror or str(exc)
        raise OutputError(f"Cannot write to '{path}': {reason} in '{folder}'; choose another {option} or make "
                          "that folder writable.") from None


def check_writable_file(path: str | Path, option: str = "--out") -> None:
    """`check_writable` for one file a command writes at the end (its missing folders are then created): a
    report must not be lost after an hour of work because its folder did not exist or was a file."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"Cannot write to '{path}': it is a folder; pass a file name to {option} (e.g. "
                          f"{path / 'report.json'}).")
    check_writable(path.parent, option)


def write_text_file(path: str | Path, text: str) -> None:
    """Write `text` to `path` all or nothing, creating its missing folders (checked by `check_writable_file`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_file(path, lambda tmp: tmp.write_text(text))


# ---------------------------------------------------------------- the writers


EXISTS = "already exists; pass --overwrite to replace what this command writes there (other files are kept), or " \
         "choose another folder"


@contextmanager
def atomic_folder(target: str | Path, overwrite: bool = False, replaces: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary sibling folder that becomes `target` only if the block finishes.

    Over an existing folder (`overwrite`) only what the block wrote is moved in, file by file,
    each rename atomic: other files there (another model's, the user's) are kept, except those
    matching `replaces`, names this writer owns that would otherwise pair stale files with new ones.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise ExportError(f"'{target}' {EXISTS}.")
    with reporting_write_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target.parent)
        tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(target.name), suffix=".tmp", dir=target.parent))
        try:
            yield tmp
            share(tmp)
            if target.is_dir():
                _move_into(tmp, target, replaces)
            elif target.exists():
                old = target.with_name(f"{temporary_prefix(target.name)}old.tmp")
                os.replace(target, old)
                os.replace(tmp, target)
                os.unlink(old)
            else:
                os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _move_into(tmp: Path, target: Path, replaces: tuple[str, ...]) -> None:
    """Move the entries of `tmp` into `target`, replacing those of the same name; remove stale `replaces` files."""
    remove_stale_temporaries(target)
    written = {entry.name for entry in tmp.iterdir()}
    for pattern in replaces:
        for stale in target.glob(pattern):
            if stale.name not in written and stale.is_file():
                stale.unlink()
    for entry in sorted(tmp.iterdir(), key=lambda e: e.name == "config.json"):  # the config last: it says what loads
        dest = target / entry.name
        if dest.is_dir() and not dest.is_symlink():  # a sub-folder this writer writes whole
            old = target / f"{temporary_prefix(entry.name)}old.tmp"
            os.replace(dest, old)
            os.replace(entry, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(entry, dest)


@contextmanager
def atomic_files(folder: str | Path) -> Iterator[Callable[[str], Path]]:
    """Write several files of `folder` under temporary names and rename them in only once all are written.

    The block calls `stage(name)` for the path to write `name` to. A reader never sees part
    of the set under the names it loads; on an error the staged files are removed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    staged: dict[str, Path] = {}

    def stage(name: str) -> Path:
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(name), suffix=".tmp", dir=folder)
        os.close(fd)
        staged[name] = Path(tmp)
        return staged[name]

    try:
        yield stage
        for name, tmp in staged.items():
            share(tmp)
            os.replace(tmp, folder / name)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)


def atomic_file(path: str | Path, write: Callable[[Path], object], fsync: bool = False) -> None:
    """Call `write(tmp)` on a temporary sibling, then rename it to `path` (after fsync if asked)."""
    path = Path(path)
    with reporting_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        fd, name = tempfile.mkstemp(prefix=temporary_prefix(path.name), suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            write(tmp)
            if fsync:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            share(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
