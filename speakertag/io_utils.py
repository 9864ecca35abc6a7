"""Atomic file writes: readers never see a half-written output file."""
import contextlib
import os
import uuid
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder, fsync, then os.replace.

    The temporary file is removed if anything fails. Raises FileNotFoundError (an OSError)
    "output folder does not exist: <dir>" when the parent folder is missing, and an OSError
    naming `path` when it cannot be written (a full disk: "No space left on device: <path>").
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {folder}")
    tmp = folder / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    # os.open with mode 0o666 lets the umask set the permissions (mkstemp would force 0o600)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:  # a read-only folder: name the output, not the temporary file
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:  # name the output, not the temporary file
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` as UTF-8 (newlines kept as written) with atomic_write_bytes."""
    atomic_write_bytes(path, text.encode("utf-8"))
