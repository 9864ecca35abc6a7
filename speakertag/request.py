"""What a command asks for beside the library's options, checked before anything heavy loads
(torch, a model) or runs: for `tag` its inputs, its outputs and where it runs, and which run
serves it: live (live.tag_live), one film, or a batch (batch.tag_films); for `train` and
`refine` the model folder they write."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import writers
from .errors import SpeakertagError, UsageError
from .io_utils import STDOUT, check_output_folder, check_parent_folder, followed


@dataclass(frozen=True)
class TagRequest:
    """Raises UsageError, naming the options, when they do not go together."""
    films: tuple[Path, ...]  # files, or folders searched recursively; "-": a stream on standard input
    out: Path | None = None  # one input's output; None or "-": standard output
    out_dir: Path | None = None  # one output per input in this folder
    fmt: str | None = None  # writers.FORMATS; None: the one out's name asks for, else text
    report: Path | None = None  # one input: also an HTML report
    report_audio: str | None = None  # the report's player, "link" or "embed"; None: link
    plot: Path | None = None  # one input: also the score plot (PNG)
    scores: Path | None = None  # one input: also the scores of every cell (.csv or .npz)
    exclusive: bool = False  # TagOptions.exclusive, which a live run cannot apply
    follow: bool = False  # the one film is still being written: read it as it grows
    follow_timeout_s: float = 10.0  # with follow: this long without growth ends the recording
    jobs: int = 1  # films tagged at once, each in its own process (engine local)
    engine: str = "local"  # "local" or "ray" (cluster.tag_on_ray)
    ray_address: str | None = None  # with engine ray: the cluster to join; None: start Ray here
    force: bool = False  # with out_dir: tag again also the films whose output is up to date

    def __post_init__(self):
        films, stdin = self.films, Path(STDOUT)
        one_file = len(films) == 1 and not films[0].is_dir()
        extras = self.report or self.plot or self.scores
        if self.live and (len(films) > 1 or self.out_dir or extras or self.exclusive
                          or (self.follow and films[0] == stdin)):
            raise UsageError("live input ('-' or --follow) takes one input (a file with --follow), and none of "
                             "--out-dir, --report, --plot, --scores, --exclusive")
        if self.report_audio is not None and self.report is None:
            raise UsageError("--report-audio needs --report")
        if extras and (self.out_dir is not None or not one_file):
            raise UsageError("--report and --plot take a single input file (no folder, no --out-dir), "
                             "and so does --scores")
        if self.scores is not None and writers.scores_format_of(self.scores) is None:
            raise UsageError(f"--scores {self.scores}: the name must end in .csv or .npz")
        named = [p.resolve() for p in (self.out, self.report, self.plot, self.scores) if p is not None]
        if len(set(named)) < len(named):
            raise UsageError("--out, --report and --plot must name different files (and --scores)")
        if self.out is not None and self.out_dir is not None:
            raise UsageError("--out and --out-dir exclude each other")
        if self.out_dir is None and not one_file:
            raise UsageError("several inputs or a folder need --out-dir DIR (one output file per input)"
                             + ("; --out names a single file" if self.out is not None else ""))
        if self.engine == "ray" and self.out_dir is None:
            raise UsageError("--engine ray needs --out-dir DIR")
        if self.ray_address is not None and self.engine != "ray":
            raise UsageError("--ray-address needs --engine ray")
        if self.engine == "ray" and self.jobs != 1:
            raise UsageError("--jobs is for --engine local; on Ray every film is a task and the cluster's "
                             "CPUs decide how many run at once")

    @property
    def stdin(self) -> bool:
        """Whether the input is a stream on standard input."""
        return Path(STDOUT) in self.films

    @property
    def live(self) -> bool:
        """Whether each segment is given out as it closes (standard input, or follow)."""
        return self.stdin or self.follow

    @property
    def outputs(self) -> list[Path]:
        """The files it writes beside those of a batch (out_dir): the output, report, plot, scores."""
        return [p for p in (self.output, self.report, self.plot, self.scores) if p is not None]

    @property
    def output(self) -> Path | None:
        """The one output file; None: standard output."""
        return None if self.out == Path(STDOUT) else self.out

    @property
    def format(self) -> str:
        """The output format: fmt, else the one the output's name asks for, else text."""
        return self.fmt or (writers.format_of(self.output) if self.output is not None else None) or "text"


def checked_train_out(out_dir: Path, positive: Sequence[str], negative: Sequence[Path], name: str,
                      base: Path | None) -> Path:
    """`train --out`, a symlink followed (the model goes where it points, the link stays), once
    what can be checked in a moment is, before training: its parent folder, the voice's name,
    the clips and spans (a missing file, a folder without audio, bad spans), and that writing
    the model folder there deletes none of them nor the base model."""
    from .audio import find_media_files
    from .spans import split_sources

    out_dir = followed(out_dir)
    check_parent_folder(out_dir)
    try:
        writers.check_voice_name(name)
    except ValueError as e:
        raise SpeakertagError(f"--name: {e}") from None
    files, films = split_sources(positive, name)
    neg_files, neg_films = split_sources(negative, name, others=True)
    clips = find_media_files(files) + [f.film for f in films + neg_films] + find_media_files(neg_files)
    from .model import MODEL_FILE

    check_output_folder(out_dir, clips + ([base] if base is not None and str(base).lower() != "none" else []),
                        MODEL_FILE)
    return out_dir


def check_refine_out(model_dir: Path, out_dir: Path | None, film: Path, labels: Path) -> None:
    """`refine --model` is a folder, and writing `--out` deletes none of the inputs (refined in
    place, out_dir None or --model itself, the folder's other files are kept)."""
    if not model_dir.is_dir():
        raise SpeakertagError(f"no such model folder: {model_dir}")
    if out_dir is not None and not (out_dir.is_dir() and os.path.samefile(out_dir, model_dir)):
        from .model import MODEL_FILE

        check_output_folder(out_dir, [film, labels, model_dir], MODEL_FILE)
