"""The bad-input corpus: every input a user can get wrong, through the real command line.

Every file is generated here into a temporary folder, but for the fuzzer's findings that
need their exact bytes (tests/fixtures/fuzz/). Each case runs `python -m speakertag ...` in a
subprocess, in a fresh empty output folder, and names the exit code and a phrase of the
expected error. A failure must
give exactly one stderr line "speakertag: error: ..." (or, for an option error, click's usage
text with one "Error:" line, exit code 2; for a batch, an error line per film or folder it
could not tag and the summary naming them), no traceback, nothing on stdout, and leave the
output folder empty: no partial output, no temporary file. The valid inputs (odd rates and
channel counts, odd names, damaged samples that are sanitised, a film shorter than one
window) must work: exit code 0 and a well-formed output.

No output destroys an input: an output that is an input of the same command (the film, a
model's files, a memory, a model folder holding the clips) or that is not a regular file (a
device, a pipe) is refused before any work; a symlink is followed, not replaced. Those cases
aim at copies (victim*), so that a regression cannot spoil the inputs of the other cases.

Decisions the corpus pins down: NaN samples are read as 0 and infinite ones as full scale
(+-1), huge float samples are clipped to +-1e6 (speakertag.audio.MAX_ABS_SAMPLE), so such
files are tagged, not refused. A truncated MP3 gives what can be decoded, a truncated FLAC
"cannot decode" (its decoder loses sync), an MP4 cut before or in its index "cannot read". A
clip that cannot be decoded stops `train` with its name.

Cases run two at a time (SPEAKERTAG_TEST_JOBS) as the tests ask for them: each pays for a
Python start with torch, which is most of its time.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speakertag.params import FORMAT_VERSION, TrainParams, speakertag_version

from conftest import (
    EXAMPLE,
    TINY_NEGATIVE,
    TINY_POSITIVE,
    sparse_silent_wav,
    speech_like,
    write_audio,
    write_container,
)

RATE = 22050
FUZZ = Path(__file__).resolve().parent / "fixtures" / "fuzz"  # inputs found by scripts/fuzz_decode.py
JOBS = int(os.environ.get("SPEAKERTAG_TEST_JOBS", "2"))

# Runs the command with limits set in the child before it becomes `python -m speakertag`
# (what a preexec_fn would do, without forking a test process that has threads):
# argv: max file size in bytes (0: none), "1" to drop root's permission override, the command.
LAUNCHER = """
import ctypes, os, resource, signal, sys
max_file_bytes, drop_dac = int(sys.argv[1]), sys.argv[2] == "1"
if max_file_bytes:  # a full disk: a write past the limit fails with EFBIG (SIGXFSZ ignored)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
if drop_dac:  # root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: file permissions apply
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone after exec too
            sys.exit(77)
os.execv(sys.executable, [sys.executable, "-m", "speakertag", *sys.argv[3:]])
"""
CANNOT_DROP_DAC = 77


class Corpus(dict):
    """name -> path of every generated input, under `root` (an unknown name: a missing file
    there); `marker` is the file a pickle payload would create."""
    root: Path
    marker: Path

    def __missing__(self, name: str) -> Path:
        return self.root / name


Build = Callable[[Corpus, Path], list]


@dataclass(frozen=True)
class Case:
    name: str
    args: Build  # (corpus, empty output folder) -> command line after `python -m speakertag`
    phrase: str  # in the error line ("" for a valid input)
    exit_code: int = 1
    output: str = ""  # a valid input: the one file (or model folder) it writes in the output folder
    max_file_bytes: int = 0  # a full disk
    unreadable: bool = False  # as root, run without the permission override that makes chmod 000 moot
    slow: bool = False  # started first
    batch: bool = False  # tag --out-dir that goes on after failures: phrase is in its summary line
    check: Callable[[Corpus, Path, subprocess.CompletedProcess], None] | None = None  # more to verify


def tag(film: str, *extra, model: str = "model", out: str = "out.json") -> Build:
    """`tag` of corpus file `film` to o/out; `extra` arguments that name corpus files become their paths."""
    return lambda c, o: ["tag", c[film], "--model", c[model], "--format", "json", "--out", o / out, "-q",
                         *(c.get(a, a) for a in extra)]


def train(positive: str, negative: str = "neg", *extra) -> Build:
    return lambda c, o: ["train", "--positive", c[positive], "--negative", c[negative], "--out", o / "voice",
                         "--steps", "1", "-q", *extra]


def train_spans(spans: str, film: str | None = None) -> Build:
    """`train` on spans of the example film (or of corpus file `film`), without negatives."""
    return lambda c, o: ["train", "--positive", f"{c[film] if film else EXAMPLE / 'movie01.mp4'}@{spans}",
                         "--out", o / "voice", "--steps", "1", "-q"]


def ok(build: Build, name: str, output: str = "out.json", slow: bool = False, phrase: str = "",
       check: Callable | None = None) -> Case:
    """A valid input: exit code 0, `output` in the output folder ("": nothing there) and
    `phrase` on stderr."""
    return Case(name, build, phrase, exit_code=0, output=output, slow=slow, check=check)


def tag_onto(option: str, target: str, film: str = "victim.wav", model: str = "victim-model") -> Build:
    """`tag` of corpus file `film` with output `option` (--out, --report, --plot) naming corpus file `target`."""
    return lambda c, o: ["tag", c[film], "--model", c[model], "--format", "json", option, c[target], "-q"]


def memory_unchanged(c: Corpus, o: Path, r) -> None:
    """memory merge of a memory with itself: o/m.npz holds the same entries, none twice."""
    from speakertag.memory import load_memory

    merged, original = load_memory(o / "m.npz"), load_memory(c["model"])
    np.testing.assert_array_equal(merged.embeddings, original.embeddings)
    np.testing.assert_array_equal(merged.negatives, original.negatives)


def made_by_this_version(folder: Path) -> None:
    """The model folder records the speakertag version that made it: model, history and memory."""
    from speakertag.memory import load_memory
    from speakertag.model import load_model

    meta = load_model(folder, "cpu").meta
    assert meta["speakertag_version"] == meta["history"][-1]["speakertag_version"] == speakertag_version()
    assert load_memory(folder).speakertag_version == speakertag_version()


def written_through_link(c: Corpus, o: Path, r) -> None:
    assert c["link.json"].is_symlink() and os.readlink(c["link.json"]) == "link-target.json"
    assert isinstance(json.loads(c["link-target.json"].read_text())["segments"], list)


def batch_wrote(*names: str) -> Callable:
    """The batch wrote these outputs (and their stamps) in o/tags, nothing else."""
    def check(c: Corpus, o: Path, r) -> None:
        assert listing(o / "tags") == {*names, ".speakertag", *(f".speakertag/{n}.stamp" for n in names)}
    return check


CASES = [
    # --- tag: files that are not audio, or damaged -------------------------------------------
    Case("empty-file", tag("empty.wav"), "empty file"),
    Case("wav-zero-frames", tag("zero-frames.wav"), "no audio in"),
    Case("wav-header-only", tag("header-only.wav"), "no audio in"),
    Case("wav-cut-in-header", tag("header-cut.wav"), "cannot read"),
    Case("flac-cut-in-header", tag("cut-40B.flac"), "cannot read"),
    Case("flac-cut-50pc", tag("cut-50pc.flac"), "cannot decode"),
    Case("mp3-cut-100B", tag("cut-100B.mp3"), "cannot read"),
    ok(tag("cut-10pc.mp3"), "mp3-cut-10pc-shorter-than-a-window", phrase="shorter than one window"),
    ok(tag("cut-60pc.mp3"), "mp3-cut-60pc-decodes-what-is-there"),
    Case("mp4-cut-50pc", tag("cut-50pc.mp4"), "cannot read"),
    Case("mp4-cut-in-index", tag("cut-99pc.mp4"), "cannot read"),
    Case("random-bytes-wav", tag("random.wav"), "cannot read"),
    Case("text-named-mkv", tag("text.mkv"), "cannot read"),
    Case("video-without-audio", tag("video-only.mp4"), "no audio stream"),
    Case("stream-out-of-range", tag("two-tracks.mkv", "--stream", "5"), "--stream 5 does not exist"),
    Case("silent-2-hours", tag("silence-2h.wav"), "silent", slow=True),
    Case("all-nan-is-silent", tag("all-nan.wav"), "silent"),
    ok(tag("one-second.wav"), "shorter-than-a-window", phrase="1.000 s of audio, shorter than one window (2.032 s)"),
    # 2.01 s is more than a window's 172 frames (2.00 s), less than the 2.03 s of samples they need
    ok(tag("2.01-seconds.wav"), "2.01-s-shorter-than-the-samples-of-a-window",
       phrase="2.009 s of audio, shorter than one window (2.032 s)"),
    ok(lambda c, o: ["tag", c["films-one-short"], "--model", c["model"], "--format", "json", "--out-dir", o / "tags"],
       "batch-with-a-film-shorter-than-a-window", output="tags", phrase="tagged 2 of 2 files",
       check=batch_wrote("one-second.json", "speech.json")),
    Case("film-from-empty-stdin", lambda c, o: ["tag", "-", "--model", c["model"]], "cannot read standard input"),
    Case("film-from-empty-stdin-to-a-file", lambda c, o: ["tag", "-", "--model", c["model"], "--out", o / "x.csv"],
         "cannot read standard input"),
    Case("follow-a-missing-file", lambda c, o: ["tag", o / "rec.ts", "--follow", "--model", c["model"]],
         "no such file"),
    Case("film-is-a-pipe", tag("fifo.wav"), "it is a pipe, not a regular file"),
    Case("batch-with-an-unreadable-folder",
         lambda c, o: ["tag", c["films-one-locked"], "--model", c["model"], "--format", "json", "--out-dir", o / "tags",
                       "-q"], "1 folder could not be read: ", output="tags", unreadable=True, batch=True,
         check=batch_wrote("speech.json")),
    Case("folder-without-audio", lambda c, o: ["tag", c["no-audio"], "--model", c["model"], "--out-dir", o / "tags"],
         "no audio or video files in folder"),
    # issue 34, case 11: an --out-dir that cannot be written is refused before any film is tagged
    Case("out-dir-read-only", lambda c, o: ["tag", c["speech.wav"], "--model", c["model"], "--out-dir",
                                            c["read-only"]], "cannot write to the output folder", unreadable=True),
    Case("out-dir-in-a-read-only-folder", lambda c, o: ["tag", c["speech.wav"], "--model", c["model"], "--out-dir",
                                                        c["read-only"] / "tags"],
         "cannot make the output folder", unreadable=True),
    Case("unreadable-file", tag("unreadable.wav"), "is not readable", exit_code=2, unreadable=True),
    # fuzzing findings: ID3 tags that are not UTF-8 (PyAV raised UnicodeDecodeError); planar
    # audio of 8 or more channels (PyAV read past its planes: a segfault, also on any 7.1 Opus);
    # damaged MPEG audio named .wav (soundfile's mpg123 printed "Note: Illegal Audio-MPEG-Header")
    ok(tag("id3-latin1.mp3"), "fuzz-id3-tag-not-utf8"),
    Case("fuzz-damaged-mp3-named-wav", tag("damaged-mp3.wav"), "cannot decode"),
    Case("fuzz-aac-46-planar-channels", tag("aac-46-planar-channels.aac"), "cannot decode"),
    ok(tag("7.1-opus.mkv"), "fuzz-7.1-opus-planar"),
    # --- tag: valid inputs that must work -----------------------------------------------------
    ok(tag("8khz.wav"), "8-khz-mono"),
    ok(tag("96khz.wav"), "96-khz"),
    ok(tag("5.1.mkv"), "5.1-ac3-matroska"),
    ok(tag("nan-inf.wav"), "float-nan-inf-sanitised"),
    ok(tag("huge.wav"), "float-far-above-1"),
    ok(tag("film é 日本 (1).wav", out="résultat 日本.json"), "names-with-spaces-and-non-ascii",
       output="résultat 日本.json"),
    # --- tag: where the output goes -----------------------------------------------------------
    Case("output-in-missing-folder", lambda c, o: tag("speech.wav")(c, o / "missing"), "output folder does not exist"),
    Case("output-is-a-folder", lambda c, o: ["tag", c["speech.wav"], "--model", c["model"], "--out", c["no-audio"]],
         "is a directory", exit_code=2),
    Case("folder-as-the-film", lambda c, o: ["tag", c["folder.wav"], "--model", c["model"], "--out", o / "x.json"],
         "need --out-dir", exit_code=2),
    Case("disk-full-tag", tag("speech.wav"), "file too large", max_file_bytes=16),
    Case("output-is-the-film", tag_onto("--out", "victim.wav"), "is an input of this command"),
    Case("report-is-the-film", tag_onto("--report", "victim.wav"), "is an input of this command"),
    Case("plot-is-the-film", tag_onto("--plot", "victim.wav"), "is an input of this command"),
    Case("output-links-to-the-film", tag_onto("--out", "victim-link.json"), "is an input of this command"),
    Case("output-is-the-models-memory", tag_onto("--out", "victim-model/memory.npz"), "is an input of this command"),
    Case("out-dir-output-is-the-film", lambda c, o: ["tag", c["victim-txt/film.txt"], "--model", c["model"],
                                                     "--format", "text", "--out-dir", c["victim-txt"]],
         "is an input of this command"),
    Case("output-is-a-device", lambda c, o: ["tag", c["speech.wav"], "--model", c["model"], "--out", "/dev/null"],
         "it is a device or socket, not a regular file"),
    Case("output-is-a-pipe", tag_onto("--out", "fifo.json", film="speech.wav", model="model"),
         "it is a pipe, not a regular file"),
    ok(tag_onto("--out", "link.json", film="speech.wav", model="model"), "output-symlink-followed-not-replaced",
       output="", check=written_through_link),
    ok(lambda c, o: ["tag", c["speech.wav"], "--model", c["model"], "--format", "json", "--out", "-"],
       "output-dash-is-stdout", output="", check=lambda c, o, r: json.loads(r.stdout)),
    # --- options --------------------------------------------------------------------------------
    Case("negative-stream", tag("speech.wav", "--stream", "-1"), "invalid value for '--stream'", exit_code=2),
    Case("unknown-format", lambda c, o: ["tag", c["speech.wav"], "--model", c["model"], "--format", "xml"],
         "invalid value for '--format'", exit_code=2),
    Case("threshold-not-a-number", tag("speech.wav", "--threshold", "high"), "invalid value for '--threshold'",
         exit_code=2),
    # a score is a top-5 mean cosine minus 0.5 x the negatives' one: within [-1.5, 1.5]
    *(Case(f"threshold-{name}", tag("speech.wav", "--threshold", value), "invalid value for '--threshold'",
           exit_code=2) for name, value in (("2", "2"), ("minus-5", "-5"), ("nan", "nan"), ("inf", "inf"))),
    # --- models and memories --------------------------------------------------------------------
    Case("model-folder-without-memory", tag("speech.wav", model="model-no-memory"), "memory.npz is missing"),
    Case("model-unknown-version", tag("speech.wav", model="model-v99"), "format version 99"),
    Case("memory-unknown-version", lambda c, o: ["memory", "inspect", c["memory-v99.npz"]], "format version 99"),
    Case("memory-of-another-model", tag("speech.wav", "--memory", "other-memory.npz"), "another model"),
    Case("model-tampered", tag("speech.wav", model="model-tampered"), "failed its checksum"),
    Case("model-params-tampered", tag("speech.wav", model="model-params-tampered"), "failed its checksum"),
    Case("model-metadata-tampered", tag("speech.wav", model="model-meta-tampered"), "failed its checksum"),
    Case("model-missing-param", tag("speech.wav", model="model-missing-param"),
         f"made by another version of speakertag (format {FORMAT_VERSION}): missing train params: edge_quantile"),
    Case("memory-missing-param", lambda c, o: ["memory", "inspect", c["memory-missing-param.npz"]],
         f"made by another version of speakertag (format {FORMAT_VERSION}): missing audio params: speech_band_hz"),
    ok(lambda c, o: ["memory", "inspect", c["model"]], "memory-inspect-names-the-version-that-made-it", output="",
       check=lambda c, o, r: f"made by      speakertag {speakertag_version()}\n" in r.stdout),
    Case("memory-tampered", lambda c, o: ["memory", "inspect", c["memory-tampered.npz"]], "failed its checksum"),
    Case("model-pickle-payload", tag("speech.wav", model="model-pickle"), "refused to load"),
    Case("memory-pickle-payload", lambda c, o: ["memory", "inspect", c["memory-pickle.npz"]],
         "not a valid speakertag memory file"),
    Case("model-random-bytes", tag("speech.wav", model="model-random"), "not a valid speakertag model file"),
    Case("model-is-an-audio-file", tag("speech.wav", model="speech.wav"), "model folder"),
    Case("memory-over-the-entry-limit", lambda c, o: ["memory", "inspect", c["memory-huge.npz"]], "more than the limit"),
    Case("memory-text-file", lambda c, o: ["memory", "inspect", c["text.mkv"]], "not a valid speakertag memory file"),
    Case("merge-different-models", lambda c, o: ["memory", "merge", c["model"], c["other-memory.npz"], "--out",
                                                  o / "m.npz"], "different models"),
    Case("disk-full-memory-export", lambda c, o: ["memory", "export", c["model"], "--out", o / "m.npz"],
         "file too large", max_file_bytes=1000),
    Case("merge-with-a-text-file", lambda c, o: ["memory", "merge", c["model"], c["text.mkv"], "--out", o / "m.npz"],
         "text.mkv (not a NumPy .npz archive)"),
    ok(lambda c, o: ["memory", "merge", c["model"], c["model"], "--out", o / "m.npz"], "merge-with-itself",
       output="m.npz", check=memory_unchanged),
    Case("memory-export-onto-its-source", lambda c, o: ["memory", "export", c["victim-model"], "--out",
                                                        c["victim-model/memory.npz"]], "is an input of this command"),
    Case("memory-merge-onto-an-input", lambda c, o: ["memory", "merge", c["model"], c["victim-memory.npz"], "--out",
                                                     c["victim-memory.npz"]], "is an input of this command"),
    ok(lambda c, o: ["memory", "export", c["model"], "--out", "-"], "memory-export-to-stdout", output="",
       check=lambda c, o, r: r.stdout.startswith("PK\x03\x04")),
    # --- train ----------------------------------------------------------------------------------
    Case("train-positive-folder-without-audio", train("no-audio"), "no audio or video files in folder"),
    Case("train-positive-missing", train("missing.wav"), "no such file or folder"),
    Case("train-positive-clips-too-short", train("pos-short"), "no usable positive clips"),
    Case("train-positive-empty-file", train("pos-with-empty-file"), "empty file"),
    Case("train-positive-unreadable", train("pos-unreadable"), "permission denied", unreadable=True),
    Case("train-output-in-missing-folder", lambda c, o: train("pos")(c, o / "missing"), "output folder does not exist"),
    Case("train-output-is-a-folder-of-other-files",
         lambda c, o: ["train", "--positive", c["pos"], "--negative", c["neg"], "--out", c["no-audio"], "-q"],
         "holds files and is not a model folder"),
    Case("train-output-is-a-file", lambda c, o: ["train", "--positive", c["pos"], "--negative", c["neg"], "--out",
                                                 c["speech.wav"]], "is a file", exit_code=2),
    Case("train-negative-steps", train("pos", "neg", "--steps", "-5"), "invalid value for '--steps'", exit_code=2),
    # issue 34, case 15: a name that its own Audacity labels and SRT cues could not carry
    *(Case(f"train-name-with-{what}", train("pos", "neg", "--name", name), "--name: a voice's name must be one line")
      for what, name in (("tab", "al\tice"), ("newline", "al\nice"), ("nothing", " "))),
    Case("train-target-share-above-1", train("pos", "neg", "--target-share", "1.5"), "invalid value for '--target-share'",
         exit_code=2),
    ok(train("pos", "neg", "--target-share", "0.5"), "train-target-share-of-a-podcast-host", output="voice",
       check=lambda c, o, r: made_by_this_version(o / "voice")),
    Case("train-too-little-target-speech", train("pos-3s"),
         f"the positive clips hold 3.0 s of audio; training needs at least {TrainParams.min_target_s:g} s"),
    Case("train-output-is-the-positive-folder",
         lambda c, o: ["train", "--positive", c["victim-pos"], "--negative", c["neg"], "--out", c["victim-pos"],
                       "--steps", "1", "-q"], "is or holds an input of this command"),
    Case("train-output-is-the-base-model",
         lambda c, o: ["train", "--positive", c["pos"], "--negative", c["neg"], "--base", c["victim-model"],
                       "--out", c["victim-model"], "--steps", "1", "-q"],
         "is or holds an input of this command"),
    Case("train-same-file-both-sides", lambda c, o: train("pos")(c, o) + ["--negative", c["pos"] / TINY_POSITIVE[0]],
         "is given as both a positive and a negative clip"),
    Case("train-copy-of-a-positive-as-negative", train("pos", "neg-with-a-positive-copy"),
         "has the same audio as the positive clip"),
    Case("disk-full-train", train("pos"), "cannot write the model", max_file_bytes=100_000, slow=True),
    Case("train-negatives-of-the-target-voice", train("pos", "neg-same-voice"),
         "would tag most other sound, not the target", slow=True),
    # issue 35: moments of a film as the positives
    Case("train-span-ends-before-it-starts", train_spans("205-190"), "span 205-190 ends before it starts"),
    Case("train-spans-overlap", train_spans("50-60,00:00:58-00:01:10"), "spans 50-60 s and 58-70 s overlap"),
    Case("train-span-beyond-the-film", train_spans("330-340"), "span 330-340 s is beyond the end of"),
    Case("train-spans-under-10-s", train_spans("50.961-58"),
         f"the positive spans hold 7.0 s of audio; training needs at least {TrainParams.min_target_s:g} s"),
    Case("train-spans-of-a-film-without-audio", train_spans("1-20", film="video-only.mp4"), "no audio stream"),
    Case("train-spans-of-a-missing-film", train_spans("1-20", film="missing.mkv"), "no such file"),
    Case("train-spans-neither-times-nor-a-file", train_spans("1:00-2:70"), "'2:70' is not a time"),
    Case("train-spans-file-missing", train_spans("spans.txt"), "is neither spans start-end"),
]


# --- the generated inputs -----------------------------------------------------------------------

class Payload:
    """Unpickling this runs `touch path`."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch '{self.path}'",)


def encoded(samples: np.ndarray, rate_hz: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate_hz, format=fmt)
    return buf.getvalue()


def id3_latin1(mp3: bytes) -> bytes:
    """`mp3` behind an ID3v2.4 title whose text says UTF-8 but is Latin-1 (a common mistake)."""
    def syncsafe(n: int) -> bytes:
        return bytes([(n >> 21) & 127, (n >> 14) & 127, (n >> 7) & 127, n & 127])

    text = b"\x03Caf\xe9 \xe0 la cr\xe8me"
    frame = b"TIT2" + syncsafe(len(text)) + b"\x00\x00" + text
    return b"ID3\x04\x00\x00" + syncsafe(len(frame)) + frame + mp3


def rewrite_npz(src: Path, dst: Path, change: Callable[[dict, dict], None], checksum_again: bool = False) -> Path:
    """Copy a memory file with change(arrays, header) applied and the checksum left as it was
    (checksum_again: made to fit the change, as another version's file would have it)."""
    from speakertag.memory import _checksum

    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header"].tobytes().decode())
    change(arrays, header)
    if checksum_again:
        header.pop("checksum")
        header["checksum"] = _checksum(arrays["embeddings"], arrays["negatives"], header)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(dst, **arrays)
    return dst


def make_models(c: Corpus, model: Path) -> None:
    """Broken model folders and memory files next to the good tiny model."""
    import torch

    from speakertag.memory import MAX_MEMORY_ENTRIES, Memory, save_memory
    from speakertag.model import new_model, payload_checksum
    from speakertag.params import Params

    r = c.root
    payload = torch.load(model / "model.pt", weights_only=True)

    def model_dir(name: str, data: object = None, memory: bool = True) -> Path:
        d = r / name
        d.mkdir()
        if data is not None:
            torch.save(data, d / "model.pt") if not isinstance(data, bytes) else (d / "model.pt").write_bytes(data)
        if memory:
            shutil.copy(model / "memory.npz", d / "memory.npz")
        c[name] = d
        return d

    model_dir("model-no-memory", payload, memory=False)
    model_dir("model-v99", {**payload, "format_version": 99})
    state = dict(payload["state_dict"])
    first = min(k for k in state if k.endswith("weight"))
    state[first] = state[first] + 0.01
    model_dir("model-tampered", {**payload, "state_dict": state})
    # The checksum covers the params and the metadata too, not only the weights.
    model_dir("model-params-tampered", {**payload, "params": {**payload["params"],
                                                              "tag": {**payload["params"]["tag"], "top_k": 1}}})
    model_dir("model-meta-tampered", {**payload, "meta": {**payload["meta"], "name": "mallory"}})
    # Another version's file: a param this one needs is missing (its checksum fits: written so).
    older = {**payload, "params": {**payload["params"], "train": {
        k: v for k, v in payload["params"]["train"].items() if k != "edge_quantile"}}}
    model_dir("model-missing-param", {**older, "checksum": payload_checksum(older)})
    model_dir("model-pickle", {**payload, "meta": {"note": Payload(c.marker)}})
    model_dir("model-random", np.random.default_rng(1).bytes(5000))

    c["memory-v99.npz"] = rewrite_npz(model / "memory.npz", r / "memory-v99.npz",
                                      lambda a, h: h.update(format_version=99))
    c["memory-missing-param.npz"] = rewrite_npz(model / "memory.npz", r / "memory-missing-param.npz",
                                                lambda a, h: h["params"]["audio"].pop("speech_band_hz"),
                                                checksum_again=True)
    c["memory-tampered.npz"] = rewrite_npz(model / "memory.npz", r / "memory-tampered.npz",
                                           lambda a, h: h.update(threshold=-1.0))
    c["memory-pickle.npz"] = rewrite_npz(model / "memory.npz", r / "memory-pickle.npz",
                                         lambda a, h: a.update(embeddings=np.array([Payload(c.marker)], dtype=object)))
    # The payloads are real: loaded unsafely, each one runs.
    for unsafe_load in (lambda: torch.load(c["model-pickle"] / "model.pt", weights_only=False),
                        lambda: np.load(c["memory-pickle.npz"], allow_pickle=True)["embeddings"]):
        unsafe_load()
        assert c.marker.exists()
        c.marker.unlink()

    torch.manual_seed(1)
    other = new_model(Params())
    emb = np.random.default_rng(0).standard_normal((10, 128)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    c["other-memory.npz"] = save_memory(Memory(emb, emb[:2], other.params, other.fingerprint, 0.5, "other"),
                                        r / "other-memory.npz")
    # A memory whose arrays claim more rows than the limit (their data is not even there).
    c["memory-huge.npz"] = r / "memory-huge.npz"
    with zipfile.ZipFile(c["memory-huge.npz"], "w") as z:
        for key, rows in (("embeddings", MAX_MEMORY_ENTRIES + 1), ("negatives", 0)):
            with z.open(f"{key}.npy", "w") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, 128)})
        z.writestr("header.npy", b"")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_model_dir) -> Corpus:
    r = tmp_path_factory.mktemp("corpus")
    c = Corpus()
    c.root, c.marker = r, r / "payload-ran"
    c["model"] = tiny_model_dir

    def put(name: str, data: bytes) -> Path:
        (r / name).write_bytes(data)
        c[name] = r / name
        return r / name

    def audio(name: str, samples: np.ndarray, rate_hz: int = RATE, **kwargs) -> Path:
        c[name] = write_audio(r / name, samples, rate_hz, **kwargs)
        return c[name]

    speech = speech_like(4.0, RATE)
    audio("speech.wav", speech)
    put("empty.wav", b"")
    audio("zero-frames.wav", np.zeros(0, np.float32))
    wav = encoded(speech_like(3.0, RATE), RATE, "WAV")
    put("header-only.wav", wav[:44])
    put("header-cut.wav", wav[:30])
    flac = encoded(speech_like(6.0, 16000), 16000, "FLAC")
    put("cut-40B.flac", flac[:40])
    put("cut-50pc.flac", flac[:len(flac) // 2])
    mp3 = encoded(speech_like(8.0, RATE), RATE, "MP3")
    put("cut-100B.mp3", mp3[:100])
    for pc in (10, 60):
        put(f"cut-{pc}pc.mp3", mp3[:len(mp3) * pc // 100])
    put("id3-latin1.mp3", id3_latin1(mp3))
    damaged = bytearray(mp3)
    damaged[len(mp3) // 3:len(mp3) // 3 + 400] = bytes(400)
    put("damaged-mp3.wav", bytes(damaged))
    mp4 = write_container(r / "full.mp4", [("aac", speech_like(4.0, 48000), 48000)], video=True).read_bytes()
    for pc in (50, 99):
        put(f"cut-{pc}pc.mp4", mp4[:len(mp4) * pc // 100])
    rng = np.random.default_rng(0)
    put("random.wav", rng.bytes(4000))
    put("text.mkv", b"this is not a film\n" * 50)
    c["video-only.mp4"] = write_container(r / "video-only.mp4", [], video=True)
    c["two-tracks.mkv"] = write_container(r / "two-tracks.mkv", [("aac", speech_like(3.0, 48000), 48000),
                                                                 ("aac", speech_like(3.0, 48000, seed=1), 48000)])
    c["silence-2h.wav"] = sparse_silent_wav(r / "silence-2h.wav", 2 * 3600)
    audio("one-second.wav", speech_like(1.0, RATE))
    audio("8khz.wav", speech_like(3.0, 8000), 8000)
    audio("96khz.wav", speech_like(3.0, 96000), 96000)
    s48 = speech_like(3.0, 48000)
    c["5.1.mkv"] = write_container(r / "5.1.mkv", [("ac3", np.stack([s48, s48, s48, 0.1 * s48, s48, s48]), 48000)])
    c["7.1-opus.mkv"] = write_container(r / "7.1-opus.mkv", [("libopus", np.repeat(s48[None], 8, axis=0), 48000)])
    c["aac-46-planar-channels.aac"] = FUZZ / "aac-46-planar-channels.aac"
    x = speech_like(3.0, RATE)
    x[1000:1100], x[2000], x[3000] = np.nan, np.inf, -np.inf
    audio("nan-inf.wav", x, subtype="FLOAT")
    audio("all-nan.wav", np.full(3 * RATE, np.nan, np.float32), subtype="FLOAT")
    audio("huge.wav", speech_like(3.0, RATE) * np.float32(1e30), subtype="FLOAT")
    audio("film é 日本 (1).wav", speech)
    (r / "no-audio").mkdir()
    (r / "no-audio" / "notes.txt").write_text("not audio")
    c["no-audio"] = r / "no-audio"
    (r / "folder.wav").mkdir()
    write_audio(r / "folder.wav" / "inside.wav", speech, RATE)
    c["folder.wav"] = r / "folder.wav"
    audio("unreadable.wav", speech).chmod(0)
    (r / "read-only").mkdir()
    (r / "read-only").chmod(0o555)
    c["read-only"] = r / "read-only"

    for folder, role, names in (("pos", "positive", TINY_POSITIVE), ("neg", "negative", TINY_NEGATIVE[:3])):
        (r / folder).mkdir()
        for n in names:
            shutil.copy(EXAMPLE / role / n, r / folder / n)
        c[folder] = r / folder
    for i in range(3):
        write_audio(r / "pos-short" / f"clip{i}.wav", speech_like(0.6, 16000, seed=i), 16000)
    target, rate_hz = sf.read(EXAMPLE / "positive" / TINY_POSITIVE[0], dtype="float32")
    c["pos-3s"] = write_audio(r / "pos-3s" / "three-seconds.wav", target[:3 * rate_hz], rate_hz).parent
    c["pos-short"] = r / "pos-short"
    for name, bad, data in (("pos-with-empty-file", "bad.wav", b""),
                            ("pos-unreadable", "bad.wav", wav)):
        shutil.copytree(r / "pos", r / name)
        (r / name / bad).write_bytes(data)
        c[name] = r / name
    (r / "pos-unreadable" / "bad.wav").chmod(0)
    write_audio(r / "neg-with-a-positive-copy" / "copy.wav", sf.read(r / "pos" / TINY_POSITIVE[0])[0], 16000)
    (r / "neg-same-voice").mkdir()  # the target's other clips given as negatives: nothing tells them apart
    for n in sorted(set(p.name for p in (EXAMPLE / "positive").iterdir()) - set(TINY_POSITIVE)):
        shutil.copy(EXAMPLE / "positive" / n, r / "neg-same-voice" / n)
    c["neg-same-voice"] = r / "neg-same-voice"
    for n in TINY_NEGATIVE[:3]:
        shutil.copy(r / "neg" / n, r / "neg-with-a-positive-copy" / n)
    c["neg-with-a-positive-copy"] = r / "neg-with-a-positive-copy"
    audio("2.01-seconds.wav", speech_like(2.01, RATE))
    for folder, other in (("films-one-short", "one-second.wav"), ("films-one-locked", "locked/inside.wav")):
        write_audio(r / folder / "speech.wav", speech, RATE)
        write_audio(r / folder / other, speech, RATE)
        c[folder] = r / folder
    (r / "films-one-locked" / "locked").chmod(0)
    for name in ("fifo.wav", "fifo.json"):
        os.mkfifo(r / name)
        c[name] = r / name
    (r / "link.json").symlink_to("link-target.json")  # not there yet: written through the link
    # Copies for the cases whose output names an input: a regression spoils only its own case.
    shutil.copy(c["speech.wav"], r / "victim.wav")
    (r / "victim-link.json").symlink_to("victim.wav")
    (r / "victim-txt").mkdir()
    shutil.copy(c["speech.wav"], r / "victim-txt" / "film.txt")
    shutil.copytree(tiny_model_dir, r / "victim-model")
    shutil.copy(tiny_model_dir / "memory.npz", r / "victim-memory.npz")
    shutil.copytree(r / "pos", r / "victim-pos")
    make_models(c, tiny_model_dir)
    return c


# --- running the cases ----------------------------------------------------------------------------

def run_case(case: Case, c: Corpus, out: Path) -> subprocess.CompletedProcess:
    args = [str(a) for a in case.args(c, out)]
    special = case.max_file_bytes or (case.unreadable and os.geteuid() == 0)
    cmd = ([sys.executable, "-c", LAUNCHER, str(case.max_file_bytes), "1" if case.unreadable else "0", *args]
           if special else [sys.executable, "-m", "speakertag", *args])
    env = {k: v for k, v in os.environ.items() if k != "SPEAKERTAG_DEBUG"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no .pyc writes (the file size limit would refuse them)
    env["OMP_NUM_THREADS"] = "1"  # JOBS processes at once: one thread each, not JOBS x cores spinning
    # errors="replace": memory export --out - writes binary to stdout
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=600, cwd=out, env=env,
                          check=False, stdin=subprocess.DEVNULL)  # tag - reads an empty stream


@pytest.fixture(scope="module")
def runs(request, corpus) -> dict[str, tuple[Path, Future]]:
    """Every selected case started in a pool, slow ones first: name -> (output folder, future)."""
    wanted = set()  # the cases this session runs (all, or those picked with -k)
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is not None and item.module.__file__ == __file__ and spec is not None:
            wanted.add(spec.params["case"].name)
    pool = ThreadPoolExecutor(JOBS)
    started = {}
    for case in sorted((c for c in CASES if c.name in wanted), key=lambda c: not c.slow):
        out = corpus.root / "out" / case.name
        out.mkdir(parents=True)
        started[case.name] = (out, pool.submit(run_case, case, corpus, out))
    yield started
    pool.shutdown(cancel_futures=True)


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_case_names_are_unique():
    assert len({c.name for c in CASES}) == len(CASES) >= 30


@pytest.mark.slow  # every case is a speakertag process of its own
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_corpus(case: Case, corpus: Corpus, runs):
    out, future = runs[case.name]
    r = future.result()
    if r.returncode == CANNOT_DROP_DAC and case.unreadable:
        pytest.skip("running as root, and root's permission override cannot be dropped here")
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    assert r.returncode == case.exit_code, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    written = {case.output} if case.output else set()
    if case.check:
        case.check(corpus, out, r)
    if case.exit_code == 0:
        assert not any(w in r.stderr.lower() for w in ("error", "warning")), r.stderr
        assert case.phrase.lower() in r.stderr.lower(), r.stderr
        model_files = {f"{case.output}/model.pt", f"{case.output}/memory.npz"} if case.output == "voice" else set()
        assert {p for p in listing(out) if case.output != "tags" or "/" not in p} == written | model_files
        if case.output.endswith(".json"):
            doc = json.loads((out / case.output).read_text(), parse_constant=lambda s: pytest.fail(f"{s} in output"))
            assert all(math.isfinite(s[k]) for s in doc["segments"] for k in ("start", "end", "score"))
        return
    assert r.stdout == ""
    if case.exit_code == 2:  # click: "Usage: ...", "Try ...", "Error: <what>"
        errors = [line for line in lines if line.startswith("Error:")]
        assert len(errors) == 1 and case.phrase.lower() in errors[0].lower(), r.stderr
    elif case.batch:  # an error line per film or folder it could not tag, then the summary naming them
        *errors, summary = lines
        assert errors and all(line.startswith("speakertag: error: ") for line in errors), r.stderr
        assert summary.startswith("tagged ") and case.phrase.lower() in summary.lower(), r.stderr
    else:
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("speakertag: error: "), r.stderr
        assert case.phrase.lower() in lines[0].lower(), r.stderr
    assert {p for p in listing(out) if "/" not in p} == written, "partial output or temporary files left"
    assert not corpus.marker.exists(), "a pickle payload ran"
