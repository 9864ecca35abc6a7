"""Command line: parse options, call the library, print what it did. No logic lives here."""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import click

from . import signals, writers
from .allocator import reuse_freed_memory
from .errors import failure
from .io_utils import STDOUT, check_outputs
from .params import CHANNEL_CHOICES, CHANNELS, TagParams, TrainParams
from .signals import Interrupted, raise_if_interrupted
from .terminal import FiniteFloatRange, Group, Terminal, expand_greedy, refining_bar, training_bar

CHANNELS_OPTION = click.option(
    "--channels", type=click.Choice(CHANNEL_CHOICES), default="auto", show_default=True,
    help="What the model hears of a 5.1/7.1 film: the centre channel (the dialogue) alone, centre-weighted (centre "
         f"+ half of front left and right), or the average of all; auto: {CHANNELS.auto} where there is a centre. "
         "Stereo is averaged, or with coherent, only what both channels share (voices; slower; see README).")
DEVICE_OPTION = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="auto: CUDA when available, else the CPU.")
STREAM_OPTION = click.option("--stream", type=click.IntRange(0),
                             help="Audio track number (0 = first); default: the default track.")
SEED_OPTION = click.option("--seed", type=int, default=0, show_default=True)
QUIET_OPTION = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
SCORE_RANGE = TagParams().score_range
PATH, FILE_OUT, FOLDER_OUT = (click.Path(path_type=Path), click.Path(path_type=Path, dir_okay=False),
                              click.Path(path_type=Path, file_okay=False))
STDOUT_OK = click.Path(path_type=Path, dir_okay=False, allow_dash=True)  # an output file, or "-": stdout


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="speakertag")
def cli():
    """Learn one voice from a few clips, then find where it speaks in long recordings."""


@cli.command()
@click.option("--positive", multiple=True, required=True, metavar="FILM@SPANS|PATH",
              help="The target voice: moments of a recording where it speaks, FILM@START-END[,START-END...] "
                   "(seconds or [hh:]mm:ss[.f], e.g. 'film.mkv@190-205,00:17:02-00:17:20'), or FILM@SPANS.txt "
                   "(Audacity labels or CSV start,end[,label]: the rows labelled --name, or all); or clips: files "
                   "or folders (searched recursively). Repeatable, mixable. A path that exists as written is a "
                   f"file, never spans. At least {TrainParams.min_target_s:g} s in all (less tags every window "
                   "of a film).")
@click.option("--negative", multiple=True, metavar="FILM@SPANS|PATH",
              help="Other voices, music, noise: clips (files or folders), or moments of a recording as for "
                   "--positive (a spans file: its rows not labelled --name), e.g. a voice taken for the target. "
                   "Default: the bank of other voices, music and noise shipped with speakertag.")
@click.option("--out", "out_dir", required=True, type=FOLDER_OUT, help="Model folder to write (model.pt + memory.npz).")
@click.option("--name", default="target", show_default=True, help="The voice's name, used as segment label.")
@click.option("--base", type=PATH,
              help="Model to fine-tune; default: the shipped base encoder. 'none' trains from scratch.")
@SEED_OPTION
@click.option("--steps", type=click.IntRange(0), help="Maximum training steps (0: keep the base encoder, only build the memory).")
@click.option("--target-precision", type=click.FloatRange(0, 1, min_open=True),
              help="Choose the lowest threshold reaching this validation precision instead of best F1.")
@click.option("--target-share", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Share of a recording's time the target is expected to speak, which weights the threshold "
                   f"calibration; default {TrainParams.target_share:g} (a film's character); more for a podcast host.")
@DEVICE_OPTION
@QUIET_OPTION
def train(positive, negative, out_dir, name, base, seed, steps, target_precision, target_share, device, quiet):
    """Learn a voice from a few moments of a film where it speaks (or clips of it), and
    optionally clips of other sounds:

    \b
    speakertag train --positive 'film.mkv@190-205,1022-1040' --out models/alice
    """
    from .request import checked_train_out

    out_dir = checked_train_out(out_dir, positive, negative, name, base)  # before torch loads and training starts
    from .train import base_folder, save_voice, train_from, train_params

    base_dir = base_folder(base)
    p = train_params(seed, steps, target_precision, target_share)
    with training_bar(p.train.max_steps, p.train.eval_every_steps, quiet) as progress:
        model, memory, report = train_from(base_dir, positive, list(negative) or None, p, name, progress, device)

    raise_if_interrupted()
    # A model folder written again keeps the user's other files in it (notes, labels), as refine does.
    save_voice(out_dir, model, memory, out_dir if out_dir.is_dir() else None)
    for s in report.skipped:
        click.echo(f"skipped {s}", err=True)
    click.echo(report.summary(base_dir))
    click.echo(f"model written to {out_dir}")


@cli.command()
@click.option("--model", "model_dir", required=True, type=PATH,
              help="Model folder written by `speakertag train` (or an earlier refine).")
@click.option("--film", required=True, type=PATH, help="The film the labels belong to.")
@click.option("--labels", required=True, type=PATH,
              help="The corrected target segments: Audacity labels (start<TAB>end<TAB>label) or CSV "
                   "start,end[,label]. Rows labelled with the voice's name count; all rows if none is.")
@click.option("--out", "out_dir", type=FOLDER_OUT,
              help="Write the refined model here; default: replace --model in place.")
@click.option("--steps", type=click.IntRange(0),
              help="Fine-tuning steps, default 30 (0: keep the encoder, only add to the memories and recalibrate).")
@SEED_OPTION
@STREAM_OPTION
@CHANNELS_OPTION
@DEVICE_OPTION
@QUIET_OPTION
def refine(model_dir, film, labels, out_dir, steps, seed, stream, channels, device, quiet):
    """Learn from corrected labels of FILM: the corrected segments become new target
    material, what the model detects outside them new negatives; the model is fine-tuned
    briefly, its memories rebuilt and its threshold recalibrated."""
    from .model import impostors_of, shipped_base_dir
    from .refine import RefineOptions, read_corrections
    from .refine import refine as refine_voice
    from .request import check_refine_out
    from .tagging import load_voice
    from .train import save_voice

    check_refine_out(model_dir, out_dir, film, labels)
    voice = load_voice(model_dir, device)
    spans = read_corrections(labels, voice.memory.name)
    options = RefineOptions(seed=seed, stream=stream, channels=channels)
    options = options if steps is None else replace(options, steps=steps)
    with refining_bar(options.steps, quiet) as progress:
        model, memory, report = refine_voice(voice.model, voice.memory, film, spans, options, device,
                                             impostors_of(shipped_base_dir()), progress)
    out_dir = out_dir or model_dir
    save_voice(out_dir.resolve(), model, memory, model_dir)
    for note in report.notes:
        click.echo(note, err=True)
    click.echo(report.summary(memory))
    click.echo(f"model written to {out_dir}")


@cli.command()
@click.argument("films", nargs=-1, required=True, type=PATH)
@click.option("--model", "model_dirs", required=True, multiple=True, type=PATH,
              help="Model folder written by `speakertag train`, or a folder of them. Repeat to find several "
                   "voices in one pass; segments are labelled with each voice's name.")
@click.option("--memory", "memory_file", type=PATH,
              help="Use this memory file instead of the model folder's (one model only).")
@click.option("--threshold", type=FiniteFloatRange(*SCORE_RANGE),
              help=f"Score threshold, {SCORE_RANGE[0]:g} to {SCORE_RANGE[1]:g}; default: the memory's calibrated one.")
@STREAM_OPTION
@CHANNELS_OPTION
@click.option("--format", "fmt", type=click.Choice(writers.FORMATS),
              help=f"Default: the one --out's name asks for ({', '.join(writers.SUFFIX.values())}), else text.")
@click.option("--out", type=STDOUT_OK, help="One input: write here instead of stdout ('-': stdout).")
@click.option("--out-dir", type=FOLDER_OUT,
              help="Write one file per input here, named after the input (needed for several inputs or folders).")
@click.option("--jobs", "-j", type=click.IntRange(1), default=1, show_default=True,
              help="Tag this many files at once, each in its own process; at most one per CPU core, "
                   "and as many as the free memory holds.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="With --out-dir: 'ray' tags each film as a task on a Ray cluster "
                   "(pip install 'speakertag[ray]'; the films at the same paths on every machine).")
@click.option("--ray-address", metavar="ADDRESS",
              help="With --engine ray: 'auto' joins the cluster this machine belongs to, ray://HOST:PORT "
                   "connects through Ray Client; default: start Ray on this machine.")
@click.option("--force", is_flag=True,
              help="With --out-dir: tag every film again, also those whose output is up to date.")
@click.option("--min-gap", type=click.FloatRange(0), help="Merge segments closer than this (s).")
@click.option("--min-duration", type=click.FloatRange(0), help="Drop segments shorter than this (s).")
@click.option("--edge-db", type=click.FloatRange(0),
              help="Segment edges grow over cells that a target-like window covers and that are at most this "
                   "many dB quieter (250-4000 Hz) than the segment (default 10).")
@click.option("--short-edges/--cell-edges", "short_edges", default=None,
              help="Move segment edges to where 1 s windows stop sounding like the voice, or keep them on "
                   "0.5 s cells; default: what the voice was trained with (see README).")
@click.option("--exclusive", is_flag=True,
              help="Several voices: each moment goes to at most one, the one scoring furthest above its threshold.")
@DEVICE_OPTION
@click.option("--report", type=FILE_OUT,
              help="One input: also write an HTML report here (score plot, segment table, a player: "
                   "click a row to listen).")
@click.option("--report-audio", type=click.Choice(["link", "embed"]),
              help="The report's player: 'link' (default) plays the film itself, kept beside the report; "
                   "'embed' puts a compressed soundtrack in the page (about 16 MB per hour; plays any film).")
@click.option("--plot", type=FILE_OUT, help="One input: also write the score plot as PNG here.")
@click.option("--scores", type=FILE_OUT,
              help="One input: also write each voice's score of every 0.5 s cell (the plot's numbers) and its "
                   "threshold here: .csv (time_s,voice,score,threshold) or .npz.")
@click.option("--follow", is_flag=True,
              help="FILM is still being written (a recording): keep reading as it grows, give out each segment as "
                   "it closes, stop when it has not grown for --follow-timeout seconds or on Ctrl-C.")
@click.option("--follow-timeout", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="With --follow: seconds without growth that end the recording.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no line per finished file.")
def tag(films, model_dirs, memory_file, threshold, stream, channels, fmt, out, out_dir, jobs, min_gap, min_duration,
        edge_db, short_edges, device, report, report_audio, plot, quiet, engine, ray_address, force, scores, exclusive,
        follow, follow_timeout):
    """Find where each model's voice speaks in each FILM (any audio or video file, or a folder
    searched recursively). Several inputs or a folder need --out-dir; a file that fails is
    reported and the others go on (exit code 1 if any failed). FILM '-' reads a stream
    (Matroska, MPEG-TS, ...) from standard input and, like --follow, gives out each segment as it closes."""
    from .request import TagRequest

    request = TagRequest(films, out, out_dir, fmt, report, report_audio, plot, scores, exclusive, follow,
                         follow_timeout, jobs, engine, ray_address, force)  # before torch loads
    from .run import tag_request
    from .tagging import TagOptions, VoiceSpec

    spec = VoiceSpec(tuple(model_dirs), memory_file, device)
    options = TagOptions(threshold=threshold, stream=stream, channels=channels, min_gap_s=min_gap,
                         min_duration_s=min_duration, edge_db=edge_db, short_edges=short_edges, exclusive=exclusive)
    if not tag_request(request, spec, options, Terminal(quiet)):
        sys.exit(1)


@cli.command()
@click.argument("film", type=PATH)
@click.argument("subs", type=PATH)
@click.option("--model", "model_dirs", required=True, multiple=True, type=PATH,
              help="Model folder (or a folder of them); repeat for several voices.")
@click.option("--out", required=True, type=STDOUT_OK,
              help="The labelled subtitle file to write (.srt or .vtt; '-': stdout in SUBS's format).")
@click.option("--threshold", type=FiniteFloatRange(*SCORE_RANGE), help="Score threshold; default: each memory's.")
@STREAM_OPTION
@CHANNELS_OPTION
@DEVICE_OPTION
@QUIET_OPTION
def subtitles(film, subs, model_dirs, out, threshold, stream, channels, device, quiet):
    """Write SUBS (SRT or WebVTT) with the speaking voice's name before each cue's text
    ("ALICE: ..."): the voice whose segments cover at least half of the cue's time. Other
    cues are left as they were; SUBS itself is not changed."""
    from .batch import voice_inputs
    from .run import tag_film
    from .subtitles import output_format, read_subtitles, write_labelled
    from .tagging import TagOptions, VoiceSpec

    fmt = output_format(subs, out)
    spec = VoiceSpec(tuple(model_dirs), device=device)
    check_outputs([out], [film, subs, *voice_inputs(spec)])
    cues = read_subtitles(subs)  # a bad subtitle file fails before the tagging
    options = TagOptions(threshold=threshold, stream=stream, channels=channels, exclusive=True)
    result = tag_film(film, spec.load(), options, Terminal(quiet))
    labels = write_labelled(cues, result.segments, out, fmt)
    click.echo(f"{sum(x is not None for x in labels)} of {len(labels)} cues labelled, written to {_named(out)}",
               err=True)


@cli.group()
def memory():
    """Inspect, export and merge positive memories."""


MEMORY_OUT_OPTION = click.option("--out", required=True, type=STDOUT_OK, help="The memory file to write ('-': stdout).")


@memory.command("inspect")
@click.argument("path", type=PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the header as JSON.")
def memory_inspect(path, as_json):
    """Show what a memory file (or a model folder's memory) holds."""
    from .memory import describe, load_memory

    m = load_memory(path)
    click.echo(json.dumps(m.header(), indent=1) if as_json else describe(m, path))


def _named(out: Path) -> str:
    return "standard output" if out == Path(STDOUT) else str(out)


@memory.command("export")
@click.argument("model_dir", type=PATH)
@MEMORY_OUT_OPTION
def memory_export(model_dir, out):
    """Write the memory of MODEL_DIR to a standalone file."""
    from .memory import load_memory, memory_file, save_memory

    check_outputs([out], [memory_file(model_dir)])
    save_memory(load_memory(model_dir), out)
    click.echo(f"memory written to {_named(out)}", err=True)


@memory.command("merge")
@click.argument("first", type=PATH)
@click.argument("second", type=PATH)
@MEMORY_OUT_OPTION
def memory_merge(first, second, out):
    """Join two memories made by the same model into one; entries already in FIRST are not added twice."""
    from .memory import load_memory, memory_file, merge_memories, save_memory

    check_outputs([out], [memory_file(first), memory_file(second)])
    merged = merge_memories(load_memory(first), load_memory(second))
    save_memory(merged, out)
    click.echo(f"{len(merged.embeddings)} target entries written to {_named(out)}", err=True)


@cli.command()
@click.option("--reference", required=True, type=PATH, help="Ground truth: RTTM, or CSV start,end[,speaker].")
@click.option("--hypothesis", required=True, type=PATH, help="speakertag output (JSON, CSV or RTTM).")
@click.option("--speaker", help="Speaker to score in a reference with several.")
@click.option("--voice", help="Voice to score in a hypothesis with several (tag --model A --model B).")
@click.option("--collar", type=click.FloatRange(0), default=0.25, show_default=True,
              help="Seconds around each reference boundary left out of scoring.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def evaluate(reference, hypothesis, speaker, voice, collar, as_json):
    """Time-based precision, recall, F1 and detection error of a hypothesis, and where its errors
    lie: edges, other voices, whole turns missed."""
    from .evaluate import evaluate_files, format_anatomy, format_metrics

    found = evaluate_files(reference, hypothesis, speaker, voice, collar)
    click.echo(json.dumps(found.to_dict()) if as_json else format_metrics(found.metrics) + "\n" + format_anatomy(found))


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr and a non-zero exit for every user error."""
    argv = expand_greedy(sys.argv[1:] if argv is None else argv)
    signals.install()  # SIGINT and SIGTERM raise Interrupted, caught below
    reuse_freed_memory()  # fewer page faults: faster training and tagging on Linux (allocator.py)
    if not os.environ.get("SPEAKERTAG_DEBUG"):
        warnings.simplefilter("ignore")  # library warnings on stderr would break one-line errors
    try:
        cli.main(argv, prog_name="speakertag", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (Interrupted, KeyboardInterrupt, Exception) as e:  # noqa: BLE001 - one line, never a traceback
        line, code = failure(KeyboardInterrupt() if isinstance(e, click.exceptions.Abort) else e)
        if code == 2 and os.environ.get("SPEAKERTAG_DEBUG"):
            raise
        click.echo(line, err=True)
        sys.exit(code)
