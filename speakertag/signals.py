"""Ctrl-C (SIGINT) and SIGTERM: an Interrupted exception in the main thread, or a note the
caller looks at, so that an interrupted command leaves nothing half-done.

install() sets the handler (the CLI calls it once). Every signal is recorded, also one whose
exception got lost (raised inside a __del__ or a callback, where Python prints and drops it):
raise_if_interrupted() acts on the record. Inside uninterrupted() a signal is acted on when
the block ends; inside signals_noted() the first is only recorded, and the block ends itself;
a second one there raises at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Iterator


class Interrupted(BaseException):
    """Raised in the main thread by SIGINT (Ctrl-C) or SIGTERM. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` swallows it; unlike KeyboardInterrupt,
    click does not catch it (and print an empty line)."""


_received: list[int] = []  # every SIGINT / SIGTERM seen, even one raised where it got lost
_defer = False  # inside uninterrupted() or signals_noted(): note signals, act when it ends
_second_raises = False  # inside signals_noted() alone: a second signal does not wait for the block


def on_signal(signum: int, frame) -> None:
    """The handler: record the signal, and raise Interrupted unless inside a deferring block
    (in signals_noted(), unless it is the second)."""
    _received.append(signum)
    if not _defer or (_second_raises and len(_received) > 1):
        raise Interrupted(signum)


def install() -> None:
    """SIGTERM unwinds like Ctrl-C, so temporary files are removed and nothing half-written
    stays. A SIGINT ignored by whoever started us (a background job, nohup) stays ignored."""
    signal.signal(signal.SIGTERM, on_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, on_signal)


def interrupted() -> bool:
    """True once a SIGINT or SIGTERM has arrived."""
    return bool(_received)


def raise_if_interrupted() -> None:
    """Act on a signal that arrived where its exception could not propagate (an exception
    raised inside a __del__ or a callback is printed and dropped by Python)."""
    if _received:
        raise Interrupted(_received[0])


@contextlib.contextmanager
def signals_noted() -> Iterator[None]:
    """A signal arriving inside is only recorded: the block looks (interrupted()) and ends itself
    (a live input's reader waits inside FFmpeg, which would print and drop an exception). A
    second one raises Interrupted at once: the user asked twice."""
    global _second_raises
    with _deferred():
        _second_raises = True
        try:
            yield
        finally:
            _second_raises = False


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Signals arriving inside are acted on when the block ends, so that it is never left half-done."""
    global _second_raises
    outer, _second_raises = _second_raises, False  # not even a second signal leaves it half-done
    before = len(_received)
    try:
        with _deferred():
            yield
    finally:
        _second_raises = outer
    if len(_received) > before:  # one noted earlier (a live input's first Ctrl-C) is its block's to act on
        raise Interrupted(_received[before])


@contextlib.contextmanager
def _deferred() -> Iterator[None]:
    global _defer
    outer, _defer = _defer, True
    try:
        yield
    finally:
        _defer = outer


def die_with_parent(parent_pid: int) -> None:
    """In a worker or child process: be killed when the process that started it (parent_pid)
    dies, however it dies (a SIGKILL included), instead of living on orphaned. Linux only
    (prctl PR_SET_PDEATHSIG); elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before the prctl: nobody will send it
        os._exit(1)
