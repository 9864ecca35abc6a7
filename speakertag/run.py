"""A `speakertag tag` request carried out (request.TagRequest): a live input (live.tag_live),
one film to its output and its report, plot and scores, or a batch (batch.tag_films). What
happens is told to a Console: the CLI's prints lines on stderr and shows progress bars."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, ContextManager, Protocol, Sequence

from .audio import AudioInfo, probe
from .batch import Tally, render_output, tag_films, voice_inputs
from .errors import SpeakertagError
from .io_utils import check_new_files, write_files
from .request import TagRequest
from .tagging import TagOptions, TagResult, Voice, VoiceSpec, gaps_note, tag


class Console(Protocol):
    """Where a run tells what happens."""
    quiet: bool  # no progress bars, no line for each film done or segment closed

    def say(self, line: str) -> None:
        """One line for the user (notes, files written, errors of single films)."""

    def show(self, text: str) -> None:
        """The output itself, when it goes to standard output."""

    def progress(self, length_s: float | None, label: str, hidden: bool = False
                 ) -> ContextManager[Callable[[float], None]]:
        """A progress bar over length_s seconds of audio; yields progress(seconds_done)."""


def tag_film(film: Path, voices: Sequence[Voice], options: TagOptions, console: Console,
             info: AudioInfo | None = None) -> TagResult:
    """tagging.tag with a progress bar. info: the film's probe() result, if the caller has it."""
    info = info or probe(film, options.stream)
    with console.progress(info.duration_s, film.name) as progress:
        return tag(film, voices, options, progress, info)


def tag_request(request: TagRequest, spec: VoiceSpec, options: TagOptions, console: Console) -> bool:
    """Carry out `request` with the voices of `spec`; False when a film of a batch failed or a
    folder could not be read (the others went on). Any other failure raises."""
    if request.live:
        _tag_live(request, spec, options, console)
    elif request.out_dir is None:
        _tag_one(request, spec, options, console)
    else:
        return _tag_batch(request, spec, options, console)
    return True


def _tag_one(request: TagRequest, spec: VoiceSpec, options: TagOptions, console: Console) -> None:
    """One film to standard output or to its output file, and its report, plot and scores if asked."""
    from .report import report_files

    film, out = request.films[0], request.output
    check_new_files(request.outputs, [film, *voice_inputs(spec)])
    info = probe(film, options.stream)  # a bad film fails here, before the model loads
    result = tag_film(film, spec.load(), options, console, info)
    text = render_output(request.format, film, result)
    if result.note:
        console.say(result.note)
    player = request.report_audio or "link"
    with console.progress(result.duration_s, "report audio", request.report is None or player != "embed") as progress:
        files = report_files(film, result, request.report, request.plot, request.scores, player, options.stream,
                             options.channels, progress)
    if out is None:
        console.show(text)
    else:
        files = {out: (f"{len(result.segments)} segments", text), **files}
    write_files(files, lambda path, what: console.say(f"{what} written to {path}"))


def _tag_live(request: TagRequest, spec: VoiceSpec, options: TagOptions, console: Console) -> None:
    """live.tag_live, each segment told as it closes when the output goes to a file, then a
    summary; a followed file cut short or replaced is an error, the segments found before kept."""
    from .live import closing_line, tag_live

    film, out = (None if request.stdin else request.films[0]), request.output
    check_new_files(request.outputs, ([] if film is None else [film]) + voice_inputs(spec))

    def closed(segments, duration_s: float) -> None:
        for s in segments if out is not None and not console.quiet else ():
            console.say(closing_line(s, duration_s))

    run = tag_live(film, spec.load(), request.format, out, options,
                   request.follow_timeout_s if request.follow else None, closed)
    if run.gaps:
        console.say(gaps_note(run.source, run.gaps))
    if not console.quiet or run.interrupted:
        console.say(run.summary(out))
    if run.cut_short:  # a new recording in the old one's file: not joined to it
        raise SpeakertagError(run.cut_short_error())


def _tag_batch(request: TagRequest, spec: VoiceSpec, options: TagOptions, console: Console) -> bool:
    """batch.tag_films, a line per film (a failure: its error, and the others go on) and a
    summary line; False if any film failed or a folder could not be read."""
    r, tally = request, Tally()
    with contextlib.closing(tag_films(r.films, r.out_dir, r.format, spec, options, r.jobs, r.engine, r.ray_address,
                                      r.force, lambda film, voices: tag_film(film, voices, options, console),
                                      console.say)) as outcomes:
        for o in outcomes:
            tally.add(o)
            for line in o.lines(console.quiet):
                console.say(line)
    console.say(tally.summary())
    return not tally.failed
