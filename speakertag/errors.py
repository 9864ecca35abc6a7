"""The one exception type that reaches users as a one-line message."""


class SpeakertagError(Exception):
    """A problem with the user's input or files, explained in one line."""


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
