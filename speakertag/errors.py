"""The exception types that reach users as a one-line message, and that line for any failure."""

from .signals import Interrupted


class SpeakertagError(Exception):
    """A problem with the user's input or files, explained in one line."""


class UsageError(SpeakertagError):
    """Options that do not go together; the CLI shows it as a usage error (exit code 2)."""


def first_line(e: BaseException, limit: int = 120) -> str:
    """The first line of an exception's message (or its type's name), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


def error_message(e: BaseException) -> str:
    """One line for a failure: our own message, an OS error with its file, or the exception type."""
    if isinstance(e, SpeakertagError):
        return str(e)
    if isinstance(e, OSError):
        return f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}"
    return f"internal error: {type(e).__name__}: {e}"


def failure(e: BaseException) -> tuple[str, int]:
    """The line on stderr and the exit code of a command that `e` ended: 130 interrupted,
    1 the user's input or files (our errors, OS errors), 2 anything else (a bug)."""
    if isinstance(e, (Interrupted, KeyboardInterrupt)):
        return "speakertag: interrupted", 130
    if isinstance(e, (SpeakertagError, OSError)):
        return f"speakertag: error: {error_message(e)}", 1
    return f"speakertag: {error_message(e)} (set SPEAKERTAG_DEBUG=1 for details)", 2


def check_format(header: object, kind: str, file: object, version: int, oldest: int | None = None) -> int:
    """Refuse a model or memory header that is not of `kind` ("model", "memory") or whose
    format version is not in oldest..version (oldest None: `version` only); returns it."""
    if not isinstance(header, dict) or header.get("format") != f"speakertag-{kind}":
        raise SpeakertagError(f"not a speakertag {kind} file: {file}")
    found = header.get("format_version")
    low = version if oldest is None else oldest
    if not isinstance(found, int) or isinstance(found, bool) or not low <= found <= version:
        reads = f"format version {version}" if low == version else f"format versions {low}-{version}"
        remedy = ("; train it again, or convert it with scripts/upgrade_format.py from a checkout"
                  if found == 2 and low == 3 else "")
        raise SpeakertagError(f"{kind} {file} has format version {found}: made by another "
                              f"version of speakertag (this one reads {reads}){remedy}")
    return found
