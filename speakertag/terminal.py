"""How the command line meets the terminal: progress bars on stderr (hidden when quiet or not a
terminal), run.Console for `tag`, the training and refining bars, and click's pieces that the
commands share (greedy options, finite floats, library usage errors as click's)."""

from __future__ import annotations

import contextlib
import math
import sys
import time

import click

from .errors import UsageError
from .signals import raise_if_interrupted

GREEDY_OPTIONS = ("--positive", "--negative")


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan (which compares false with both bounds)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def expand_greedy(argv: list[str]) -> list[str]:
    """Let `--positive a b c` mean `--positive a --positive b --positive c` (shell globs)."""
    out, current = [], None
    for tok in argv:
        if tok in GREEDY_OPTIONS:
            current = tok
        elif tok.startswith("-"):
            current = None
        elif current is not None and out and out[-1] != current:
            out.append(current)
        out.append(tok)
    return out


class Command(click.Command):
    """A command whose library UsageError is click's: the usage line, the error, exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as e:
            raise click.UsageError(str(e), ctx) from None


class Group(click.Group):
    command_class = Command
    group_class = type  # subgroups: this class, their commands Command


def _bar_shown(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def _progressbar(length: int, label: str, quiet: bool):
    """A progress bar on stderr, hidden when quiet or not a terminal; bar.update(n, text) shows text beside it."""
    return click.progressbar(length=length, label=label, file=sys.stderr, hidden=not _bar_shown(quiet),
                             item_show_func=lambda s: s)


@contextlib.contextmanager
def training_bar(max_steps: int, eval_every_steps: int, quiet: bool):
    """Yields progress(train.StepInfo) for `train`: a bar on a terminal; without one (a log file,
    CI) one line per evaluation instead, unless quiet. Ctrl-C stops between steps."""
    log_on = not quiet and not _bar_shown(quiet)
    with _progressbar(max_steps, "training", quiet) as bar:
        def progress(info):
            raise_if_interrupted()
            val = "-" if info.val_f1 is None else f"{info.val_f1:.3f}"
            bar.update(1, f"loss {info.loss:.3f} val F1 {val}")
            if log_on and (info.step % eval_every_steps == 0 or info.step == info.max_steps):
                click.echo(f"step {info.step}/{info.max_steps}: loss {info.loss:.3f}, validation F1 {val}", err=True)
        yield progress


@contextlib.contextmanager
def refining_bar(steps: int, quiet: bool):
    """Yields progress(step info) for `refine`: a bar over its fine-tuning steps."""
    with _progressbar(max(steps, 1), "refining", quiet) as bar:
        yield lambda info: bar.update(1, f"loss {info.loss:.3f}")


class Terminal:
    """run.Console on the terminal: lines on stderr, the output on stdout, progress bars on a terminal."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def say(self, line: str) -> None:
        click.echo(line, err=True)

    def show(self, text: str) -> None:
        click.echo(text, nl=False)

    @contextlib.contextmanager
    def progress(self, length_s: float | None, label: str, hidden: bool = False):
        """A bar over length_s seconds of audio with the speed beside it; yields progress(seconds_done)."""
        started = time.monotonic()
        with _progressbar(int(length_s or 0) or 1, label, self.quiet or hidden) as bar:
            def progress(seconds):
                speed = seconds / max(time.monotonic() - started, 1e-6)
                bar.update(min(int(seconds), bar.length) - bar.pos, f"{seconds / 60:.1f} min, {speed:.0f}x real time")
            yield progress
            bar.update(bar.length - bar.pos)  # the audio after the last whole window counts as done
