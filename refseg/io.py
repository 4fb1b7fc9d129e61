"""Atomic output files: write to a temporary file in the same folder, fsync, rename.

A reader (or a crash) never sees a half-written file: either the old content or the new.
The temporary file is ``.<name>.<pid>.<random>.tmp`` next to the target. A failed write
removes it; a process killed mid-write (SIGKILL, power loss) cannot, so the next successful
write of the same file removes the temporary files of writers that no longer run.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from refseg.errors import OutputError

#: A leftover temporary file is only removed when it is at least this old (seconds), so that a
#: writer on another machine sharing the folder (whose pid means nothing here) is never disturbed.
STALE_TEMP_AGE_S = 60.0


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Permissions of new files: what ``open()`` would give (mkstemp alone would give 0600).
_NEW_FILE_MODE = 0o666 & ~_read_umask()


def check_output_path(path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """``path`` if refseg may write it, else a one-line :class:`OutputError`.

    Refused: a directory; an existing file that is not a regular file (a device such as
    /dev/null, a FIFO, a socket: the atomic rename would replace it); one of ``inputs`` (the
    photo being segmented); a folder that is missing or not writable.
    """
    path = Path(path)
    try:
        info = path.stat()  # follows links: a link to /dev/null is refused like /dev/null
    except FileNotFoundError:
        info = None
    except (OSError, ValueError) as exc:  # permissions, a name that is too long or holds a NUL byte
        raise OutputError(f"cannot write {str(path)[:200]}: {getattr(exc, 'strerror', None) or exc}") from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise OutputError(f"output path is a directory: {path}")
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise OutputError(f"output path is not a regular file (a device, FIFO or socket): {path}")
    for source in inputs:
        if info is not None and Path(source).exists() and os.path.samefile(path, source):
            raise OutputError(f"output path {path} is an input file: refusing to overwrite it")
    parent = path.parent
    if not parent.exists():
        raise OutputError(f"output folder does not exist: {parent}")
    if not parent.is_dir():
        raise OutputError(f"output folder is not a directory: {parent}")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder is not writable: {parent}")
    return path


def check_outputs(paths: Iterable[str | Path | None], inputs: Iterable[str | Path] = ()) -> None:
    """:func:`check_output_path` for each given path, and no two of them the same file."""
    inputs = list(inputs)
    seen: dict[Path, Path] = {}
    for path in (Path(p) for p in paths if p is not None):
        check_output_path(path, inputs)
        key = path.resolve()
        if key in seen:
            raise OutputError(f"two outputs name the same file: {seen[key]} and {path}")
        seen[key] = path


def child_path(folder: str | Path, name: str) -> Path:
    """``folder/name`` for a name taken from untrusted data (a sample id); a name that would
    leave ``folder`` (``..``, an absolute path, a NUL byte) is a one-line :class:`OutputError`."""
    candidate = Path(folder) / name
    if not is_inside(folder, candidate) or Path(name).is_absolute():
        raise OutputError(f"{name!r} does not name a file inside {folder}")
    return candidate


def is_inside(folder: str | Path, path: str | Path) -> bool:
    """Whether ``path`` resolves (links followed) to something below ``folder``; False when it
    cannot be resolved (a NUL byte, a link loop)."""
    try:
        return Path(folder).resolve() in Path(path).resolve().parents
    except (OSError, ValueError):
        return False


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (write + fsync + rename); returns the path.

    Raises :class:`OutputError` (one line) when :func:`check_output_path` refuses the path or the
    write fails (disk full, ...); the previous content of ``path`` is then intact.
    """
    path = Path(path)
    check_output_path(path)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{os.getpid()}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        mode = path.stat().st_mode & 0o7777 if path.is_file() else _NEW_FILE_MODE
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(path.parent)
    remove_stale_temp_files(path)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temp_files(path: str | Path, min_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Remove temporary files of ``path`` left by killed writers; returns what was removed.

    A temporary file is stale when the process that wrote it no longer runs and it has not
    been modified for ``min_age_s`` seconds.
    """
    path = Path(path)
    prefix = _temp_prefix(path)
    removed = []
    now = time.time()
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")]
    except OSError:
        return removed
    for candidate in candidates:
        pid = candidate.name[len(prefix) :].split(".", 1)[0]
        try:
            if not pid.isdigit() or _process_alive(int(pid)) or now - candidate.stat().st_mtime < min_age_s:
                continue
            candidate.unlink()
        except OSError:
            continue
        removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove(tmp: str | None) -> None:
    if tmp is not None:
        Path(tmp).unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """Encode an array (uint8 HxW or HxWx3/4) or PIL image as PNG bytes."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def save_mask_png(path: str | Path, mask: np.ndarray) -> Path:
    """Write a boolean mask as a 0/255 single-channel PNG, atomically."""
    return atomic_write_bytes(path, png_bytes(mask.astype(np.uint8) * 255))


def save_png(path: str | Path, image: np.ndarray | Image.Image) -> Path:
    """Write an RGB(A) image as PNG, atomically."""
    return atomic_write_bytes(path, png_bytes(image))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
