"""Output files: atomic writes (readers never see a half-written file), folders swapped in
whole, and the checks that keep an output from destroying anything of the user's."""
import contextlib
import os
import shutil
import stat
import sys
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import SpeakertagError
from .signals import uninterrupted

STDOUT = "-"  # as an output path: standard output


def file_kind(path: str | os.PathLike) -> str | None:
    """What `path` is when it exists and is not a regular file ("a folder", "a pipe", "a
    device or socket"), following symlinks; None for a regular file or no file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return "a folder" if stat.S_ISDIR(mode) else "a pipe" if stat.S_ISFIFO(mode) else "a device or socket"


def followed(path: str | os.PathLike) -> Path:
    """The path a symlink points to, through any chain of links; any other path as it is."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)


def check_outputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse, before any work, an output file that is one of `inputs` (the same file, as
    os.path.samefile tells: device and inode, through any link) or that exists and is not a
    regular file (a folder, a device, a pipe; a symlink counts as what it points to).
    Standard output ("-") is always fine."""
    ids = {}
    for i in inputs:
        with contextlib.suppress(OSError):  # an input that does not exist cannot be overwritten
            st = os.stat(i)
            ids[st.st_dev, st.st_ino] = i
    for out in outputs:
        if str(out) == STDOUT:
            continue
        kind = file_kind(out)
        if kind:
            raise SpeakertagError(f"cannot write to {out}: it is {kind}, not a regular file")
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(out)
            if (st.st_dev, st.st_ino) in ids:
                raise SpeakertagError(f"{out} is an input of this command ({ids[st.st_dev, st.st_ino]}) and would "
                                      "be overwritten; write the output to another file")


def check_new_files(outputs: Iterable[Path], inputs: Iterable[str | os.PathLike] = ()) -> None:
    """check_outputs, and the folder each output goes into must exist."""
    outputs = list(outputs)
    check_outputs(outputs, inputs)
    for path in outputs:
        if not path.parent.exists():
            raise SpeakertagError(f"output folder does not exist: {path.parent}")


def check_parent_folder(path: Path) -> None:
    """Refuse an output whose folder does not exist or cannot be written to."""
    if not path.parent.is_dir():
        raise SpeakertagError(f"output folder does not exist: {path.parent}")
    if not os.access(path.parent, os.W_OK):
        raise SpeakertagError(f"cannot write to the output folder (permission denied): {path.parent}")


def check_output_folder(folder: str | os.PathLike, inputs: Iterable[str | os.PathLike], marker: str) -> None:
    """Refuse a folder that is replaced whole (a model folder) while it holds one of `inputs`,
    or while it holds anything but is not a folder of this kind (no `marker` file in it)."""
    inside = Path(os.path.realpath(folder))
    for i in inputs:
        if Path(os.path.realpath(i)).is_relative_to(inside):
            raise SpeakertagError(f"the output folder {folder} is or holds an input of this command ({i}), "
                                  "which writing the model there would delete; write it to another folder")
    if inside.is_dir() and not (inside / marker).exists() and any(inside.iterdir()):
        raise SpeakertagError(f"the output folder {folder} holds files and is not a model folder (no {marker}); "
                              "writing the model there would delete them: name a new folder or a model folder")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder, fsync, then os.replace.

    "-" writes to standard output instead. A symlink is followed: its target is written,
    the link stays. Refuses (SpeakertagError) a path that is not a regular file, as
    check_outputs does. The temporary file is removed if anything fails. Raises
    FileNotFoundError (an OSError) "output folder does not exist: <dir>" when the parent
    folder is missing, and an OSError naming `path` when it cannot be written (a full
    disk: "No space left on device: <path>").
    """
    if str(path) == STDOUT:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    check_outputs([path])
    path = followed(path)
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


def write_files(files: dict[Path, tuple[str, str | bytes]], written: Callable[[Path, str], None]) -> None:
    """Write each file of {path: (what, text or bytes)} whole, in order (atomic_write_text or
    atomic_write_bytes); written(path, what) after each."""
    for path, (what, data) in files.items():
        (atomic_write_text if isinstance(data, str) else atomic_write_bytes)(path, data)
        written(path, what)


class GrowingOutput:
    """An output file written piece by piece as results come (a live run's segments), that
    never costs the user an older file: a new file is created (exclusively) and grows in
    place; over an existing file the pieces go to a temporary file beside it, which replaces
    it only at commit(). discard() (a failed run) removes what this run created and leaves an
    older file as it was. Nothing is created before the first write()."""

    def __init__(self, path: str | os.PathLike):
        self.path = followed(path)  # a symlink: its target is written, the link stays
        self.file = None
        self.tmp: Path | None = None  # set when an existing file is being replaced

    def _open(self):
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(self.path, flags, 0o666)
        except FileExistsError:  # the user's file: kept whole until this run has ended well
            self.tmp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                fd = os.open(self.tmp, flags, 0o666)
            except OSError as e:
                self.tmp = None
                raise OSError(e.errno, e.strerror, str(self.path)) from None
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        return os.fdopen(fd, "w", encoding="utf-8", newline="")

    def write(self, text: str) -> None:
        """Add `text` (flushed: a reader of the file sees it at once)."""
        try:
            if self.file is None:
                self.file = self._open()
            self.file.write(text)
            self.file.flush()
        except OSError as e:
            if e.errno is not None and e.filename is None:
                raise OSError(e.errno, e.strerror, str(self.path)) from None
            raise

    def commit(self) -> None:
        """The run has ended: close the file; a temporary file replaces the older one now."""
        if self.file is None:
            return
        with uninterrupted():
            try:
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
                if self.tmp is not None:
                    os.replace(self.tmp, self.path)
            except OSError as e:
                self.discard()
                raise OSError(e.errno, e.strerror, str(self.path)) from None
        self.file = self.tmp = None

    def discard(self) -> None:
        """The run failed: remove what it created; an older file stays as it was."""
        if self.file is None:
            return
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp if self.tmp is not None else self.path)
        self.file = self.tmp = None


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold `folder` (made here if missing, with its parents) for one run's outputs: one that
    cannot be made or written, or that a second run holds meanwhile, is refused
    (SpeakertagError) before the run's work, not found out at its end. The lock is the kernel's
    (flock on the folder itself): it ends with the process, so a killed run leaves none. The
    folders made here are removed again at the end if nothing was written into them."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpeakertagError(f"cannot make the output folder {folder}: {e.strerror or e}") from None
    try:
        _check_writable(folder)
        with _flocked(folder):
            yield
    finally:
        for p in made:  # innermost first; rmdir fails, and stops, at the first one written into
            try:
                p.rmdir()
            except OSError:
                break


def _check_writable(folder: Path) -> None:
    """Create and remove a file in `folder`: what permissions say (os.access) misses a
    read-only disk and, for root, counts for nothing."""
    probe = folder / f".speakertag-probe-{uuid.uuid4().hex[:8]}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as e:
        raise SpeakertagError(f"cannot write to the output folder {folder}: {e.strerror or e}") from None


@contextlib.contextmanager
def _flocked(folder: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SpeakertagError(f"another speakertag run is writing to {folder}: wait for it to end, "
                                  "or give another output folder") from None
        except OSError:  # a file system without locks (some network disks): go on unlocked
            pass
        yield
    finally:
        os.close(fd)


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place; an older folder is kept until the new one is there.
    Not interruptible: a signal never leaves the target missing or an old copy behind."""
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    with uninterrupted():
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)


def write_model_folder(out_dir: Path, save: Callable[[Path], object], source: Path | None = None) -> None:
    """The model folder out_dir, completed beside it and then swapped in (replace_dir): the
    previous out_dir stays whole until the new one is complete. The new folder starts as a
    copy of the folder `source` (its other files kept), or empty; save(folder) writes the
    model and memory into it. Raises SpeakertagError naming out_dir when it cannot be written
    (a missing parent folder, a full disk, a folder made read-only meanwhile)."""
    out_dir = out_dir.absolute()  # "." has no name to put the temporary folder beside
    if not out_dir.parent.is_dir():
        raise SpeakertagError(f"output folder does not exist: {out_dir.parent}")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        if source is None:
            tmp.mkdir()
        else:
            shutil.copytree(source, tmp)
        save(tmp)
        replace_dir(tmp, out_dir)
    except OSError as e:  # name the model, not tmp
        raise SpeakertagError(f"cannot write the model to {out_dir}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
