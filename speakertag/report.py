"""A visual report of one tagged film: the score over time as a PNG, and one self-contained
HTML page with that plot, the segment table and an audio player.

Pure functions: a TagResult (and the film's path) in, bytes or text out; writing the files
is the caller's job. matplotlib is imported when a plot is made (Agg backend, no display),
so that importing this module stays cheap.

The page loads nothing from elsewhere: the plot is a data: URI, the style and script are
inline. Its player plays either the film itself through a relative link (small report, but
the film must stay where it is and be in a format the browser plays) or a compressed mono
rendition of the soundtrack embedded in the page (plays anywhere, about 16 MB of page per hour).
"""

from __future__ import annotations

import base64
import html
import io
import os
import urllib.parse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from . import writers
from .params import AudioParams, speakertag_version
from .segments import Segment, cell_scores

if TYPE_CHECKING:  # tagging pulls in torch and faiss; a report needs only its result
    from .tagging import TagResult, VoiceTrack

# The embedded soundtrack: Opus (WebM) at speech quality: 24 kbit/s, about 11 MB per hour of film (16 MB as base64).
EMBED_RATE_HZ = 16000
EMBED_BIT_RATE = 24000  # bits per second
EMBED_MIME_TYPE = "audio/webm"
# Opus encoder effort 0-10: 3 is about 3x faster than the default 10 at this rate and sounds the same.
EMBED_COMPRESSION_LEVEL = 3

PLOT_WIDTH_IN = 12.0
PLOT_DPI = 100
VOICE_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
# Tick spacings for the time axis, seconds; the smallest giving at most MAX_TICKS ticks is used.
TICK_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
MAX_TICKS = 12


def clock(seconds: float, with_hours: bool) -> str:
    """Whole seconds as "mm:ss", or "h:mm:ss" when with_hours: 186.4 -> "03:06"."""
    return writers.clock(seconds, hours="shown" if with_hours else "in minutes")


def precise_clock(seconds: float) -> str:
    """Time to 0.1 s for the segment table: 186.54 -> "03:06.5", 4000.0 -> "1:06:40.0"."""
    return writers.clock(seconds, 1, hours="if any")


def track_cells(result: TagResult, track: VoiceTrack) -> tuple[np.ndarray, np.ndarray]:
    """The scores segments are cut from: (edges_s (n + 1,), scores (n,)), one per hop-long cell,
    each the mean of the windows covering it (segments.cell_scores), clipped to the film."""
    # cell_scores only uses how many hops one window spans
    hops_per_window = max(1, round(result.window_s / result.hop_s))
    scores = cell_scores(track.window_scores, AudioParams(window_frames=hops_per_window, hop_frames=1))
    edges_s = np.minimum(np.arange(len(scores) + 1) * result.hop_s, result.duration_s)
    keep = int(np.searchsorted(edges_s, result.duration_s, side="left"))  # cells starting before the end
    keep = max(1, min(keep, len(scores)))
    return edges_s[:keep + 1], scores[:keep]


@dataclass(frozen=True)
class PlotImage:
    png: bytes
    width_px: int
    height_px: int
    # Where time runs on the image, as fractions of its width: x = left + t / end_s * (right - left).
    axes_left_frac: float
    axes_right_frac: float
    end_s: float


def _tick_step_s(duration_s: float) -> int:
    return next((s for s in TICK_STEPS_S if duration_s / s <= MAX_TICKS), TICK_STEPS_S[-1])


def render_plot(result: TagResult, title: str | None = None) -> PlotImage:
    """Score over time for each voice (one panel each, shared time axis): the cell scores,
    the voice's threshold (dashed) and its segments (shaded). title: default the film's name."""
    # The Agg canvas on a bare Figure: no pyplot, no display, no global backend switched
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    tracks = result.tracks
    end_s = max(result.duration_s, result.hop_s)
    with_hours = end_s >= 3600
    height_in = 1.1 + 2.3 * len(tracks)
    fig = Figure(figsize=(PLOT_WIDTH_IN, height_in), dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(tracks), 1, sharex=True, squeeze=False)[:, 0]
    # parse_math=False everywhere: a "$" in a film or voice name is text, not a formula
    fig.suptitle(title if title is not None else Path(result.input).name, fontsize=14, fontweight="bold",
                 parse_math=False)
    for i, (ax, track) in enumerate(zip(axes, tracks)):
        color = VOICE_COLORS[i % len(VOICE_COLORS)]
        edges_s, scores = track_cells(result, track)
        for j, s in enumerate(track.segments):
            ax.axvspan(s.start_s, s.end_s, color=color, alpha=0.22, linewidth=0,
                       label=f"segments ({len(track.segments)})" if j == 0 else None)
        ax.stairs(scores, edges_s, baseline=None, color=color, linewidth=1.0, label="score")
        ax.axhline(track.threshold, color="#c0392b", linestyle="--", linewidth=1.3,
                   label=f"threshold {track.threshold:.2f}")
        low = min(float(scores.min(initial=track.threshold)), track.threshold)
        high = max(float(scores.max(initial=track.threshold)), track.threshold)
        pad = max(0.05, 0.08 * (high - low))
        ax.set_ylim(low - pad, high + pad)
        ax.set_ylabel("score")
        speaking_s = sum(s.duration_s for s in track.segments)
        ax.set_title(f"{track.name}: {len(track.segments)} segments, {clock(speaking_s, with_hours)} speaking",
                     loc="left", fontsize=11, parse_math=False)
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, fontsize=9, frameon=False,
                  borderaxespad=0.2)
        ax.grid(True, axis="x", color="#dddddd", linewidth=0.8)
        ax.margins(x=0)
    bottom = axes[-1]
    bottom.set_xlim(0, end_s)
    bottom.xaxis.set_major_locator(MultipleLocator(_tick_step_s(end_s)))
    bottom.xaxis.set_major_formatter(FuncFormatter(lambda t, _pos: clock(t, with_hours)))
    bottom.set_xlabel("time (h:mm:ss)" if with_hours else "time (mm:ss)")
    # Fixed margins (in inches, turned into fractions) so the time axis' place on the image is known.
    fig.subplots_adjust(left=0.75 / PLOT_WIDTH_IN, right=1 - 0.3 / PLOT_WIDTH_IN,
                        top=1 - 0.75 / height_in, bottom=0.6 / height_in, hspace=0.45)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # a name in a script DejaVu Sans lacks shows boxes, not warnings
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        fig.savefig(buf, format="png", dpi=PLOT_DPI)
    box = bottom.get_position()
    width_px, height_px = (int(round(v)) for v in fig.get_size_inches() * PLOT_DPI)
    return PlotImage(buf.getvalue(), width_px, height_px, float(box.x0), float(box.x1), end_s)


@dataclass(frozen=True)
class ReportAudio:
    """What the report's player plays: a link to the film, or an embedded rendition."""
    src: str = ""  # URL, relative to the report (empty when data is given)
    data: bytes = b""  # an encoded soundtrack carried in the page
    mime_type: str = ""


def link_audio(film: str | Path, report: str | Path) -> ReportAudio:
    """The film as a URL relative to the report's folder (percent-encoded), so that report
    and film can move together; an absolute file: URL where no relative path exists."""
    film_abs = Path(os.path.abspath(film))
    report_dir = Path(os.path.abspath(report)).parent
    try:
        rel = Path(os.path.relpath(film_abs, report_dir))
    except ValueError:  # another drive (Windows)
        return ReportAudio(src=film_abs.as_uri())
    return ReportAudio(src=urllib.parse.quote(rel.as_posix()))


def embed_audio(film: str | Path, stream: int | None = None,
                progress: Callable[[float], None] | None = None, channels: str = "auto") -> ReportAudio:
    """The film's soundtrack as mono EMBED_RATE_HZ Opus in WebM, encoded block by block.

    Uses the same decoder and channels as tagging, so the player's time matches the segments'
    times and a 5.1 film sounds as the model heard it.
    progress(seconds_done) is called after each block. Raises SpeakertagError like decoding.
    """
    from .audio import decode_blocks, encode_opus

    data = encode_opus(decode_blocks(film, EMBED_RATE_HZ, stream, channels=channels), EMBED_RATE_HZ, EMBED_BIT_RATE,
                       EMBED_COMPRESSION_LEVEL, progress)
    return ReportAudio(data=data, mime_type=EMBED_MIME_TYPE)


def _e(text: object) -> str:
    """Escape for HTML text and double-quoted attributes."""
    return html.escape(str(text), quote=True)


def report_files(film: Path, result: TagResult, report: Path | None = None, plot: Path | None = None,
                 scores: Path | None = None, report_audio: str = "link", stream: int | None = None,
                 channels: str = "auto", progress: Callable[[float], None] | None = None
                 ) -> dict[Path, tuple[str, bytes]]:
    """The report page, plot image and scores file of one tagged film that are asked for
    (None: not asked), made before anything is written: {path: (what, bytes)}.
    report_audio: "link" plays the film beside the page, "embed" puts a compressed copy of
    its sound in the page (decoded from `stream` with `channels`; progress(seconds done))."""
    files = {}
    if report or plot:
        image = render_plot(result)
        if plot:
            files[plot] = ("plot", image.png)
        if report:
            audio = (embed_audio(film, stream, progress, channels) if report_audio == "embed"
                     else link_audio(film, report))
            files[report] = ("report", render_html(result, image, audio, speakertag_version(missing="")).encode("utf-8"))
    if scores:
        files[scores] = ("scores", writers.render_scores(writers.scores_format_of(scores), [
            (t.name, t.threshold, *track_cells(result, t)) for t in result.tracks]))
    return files


def segment_rows(segments: list[Segment]) -> str:
    """One <tr> per segment, in the order given; data-start/data-end in seconds."""
    rows = []
    for i, s in enumerate(segments, 1):
        rows.append(
            f'<tr data-start="{s.start_s:.3f}" data-end="{s.end_s:.3f}" tabindex="0">'
            f'<td class="num">{i}</td><td class="num">{precise_clock(s.start_s)}</td>'
            f'<td class="num">{precise_clock(s.end_s)}</td><td class="num">{s.duration_s:.1f} s</td>'
            f"<td>{_e(s.label)}</td><td class=\"num\">{s.score:.2f}</td></tr>")
    return "\n".join(rows)


_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1240px; margin: 1.5em auto; padding: 0 1em; }
h1 { font-size: 1.5em; margin: 0 0 .2em; overflow-wrap: anywhere; }
.meta { color: #555; margin: 0 0 1em; }
.meta li { margin: .1em 0; }
figure { margin: 0 0 1em; }
#plot { width: 100%; height: auto; cursor: pointer; border: 1px solid #eee; }
figcaption, .note { color: #666; font-size: .9em; }
.player { position: sticky; top: 0; background: #fff; padding: .5em 0; border-bottom: 1px solid #eee; z-index: 1; }
audio { width: 100%; }
.note.problem { color: #a40000; font-weight: 600; }
table { border-collapse: collapse; min-width: 60%; margin-top: .5em; }
code { white-space: nowrap; }
th, td { padding: .3em .7em; border-bottom: 1px solid #e5e5e5; text-align: left; }
th { background: #f5f5f5; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr { cursor: pointer; }
tbody tr:hover, tbody tr:focus { background: #eef4fb; outline: none; }
tbody tr.playing { background: #d8e8f8; }
"""

_SCRIPT = """
'use strict';
const player = document.getElementById('player');
const note = document.getElementById('audio-note');
const rows = Array.from(document.querySelectorAll('#segments tbody tr'));
const data = document.getElementById('audio-data');
if (data) {
  const bytes = Uint8Array.from(atob(data.textContent.trim()), (c) => c.charCodeAt(0));
  player.src = URL.createObjectURL(new Blob([bytes], {type: data.dataset.type}));
}
function problem() {
  note.textContent = 'This browser cannot play ' + (data ? 'the embedded soundtrack' : 'the film from ' +
    player.getAttribute('src') + ' (moved, or a format it cannot play)') +
    (data ? '.' : '. Make the report with --report-audio embed to carry the soundtrack in the page.');
  note.classList.add('problem');
}
player.addEventListener('error', problem);
if (player.error) problem();
function playFrom(seconds) {
  player.currentTime = seconds;
  const started = player.play();
  if (started) started.catch(() => {});  // refused or unplayable: the 'error' handler explains
}
rows.forEach((row) => {
  row.addEventListener('click', () => playFrom(parseFloat(row.dataset.start)));
  row.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); row.click(); }
  });
});
player.addEventListener('timeupdate', () => {
  const t = player.currentTime;
  rows.forEach((row) => row.classList.toggle('playing',
    parseFloat(row.dataset.start) <= t && t < parseFloat(row.dataset.end)));
});
const plot = document.getElementById('plot');
plot.addEventListener('click', (event) => {
  const box = plot.getBoundingClientRect();
  const left = parseFloat(plot.dataset.left), right = parseFloat(plot.dataset.right);
  const frac = ((event.clientX - box.left) / box.width - left) / (right - left);
  if (frac >= 0 && frac <= 1) playFrom(frac * parseFloat(plot.dataset.end));
});
"""


def render_html(result: TagResult, plot: PlotImage, audio: ReportAudio, version: str = "") -> str:
    """The whole report page: title, summary, plot, player, segment table. Every name from
    the user (film, voices, link) is escaped; nothing is loaded from elsewhere."""
    film_name = Path(result.input).name
    segments = result.segments
    with_hours = result.duration_s >= 3600
    voices = "".join(
        f"<li><b>{_e(t.name)}</b>: {len(t.segments)} segments, "
        f"{clock(sum(s.duration_s for s in t.segments), with_hours)} speaking, threshold {t.threshold:.3f}</li>"
        for t in result.tracks)
    if result.gaps:
        spans = ", ".join(f"{clock(start_s, with_hours)}-{clock(end_s, with_hours)}" for start_s, end_s in result.gaps)
        voices += (f"<li>No audio at {spans} (a late start or gaps in its timestamps): times follow the film, "
                   "and nothing is found there</li>")
    png_uri = "data:image/png;base64," + base64.b64encode(plot.png).decode("ascii")
    if audio.data:
        source = (f'<audio id="player" controls preload="metadata"></audio>\n'
                  f'<script id="audio-data" type="application/octet-stream" data-type="{_e(audio.mime_type)}">'
                  f"{base64.b64encode(audio.data).decode('ascii')}</script>")
        how = "The soundtrack is embedded in this page (mono, speech quality)."
    else:
        source = f'<audio id="player" controls preload="metadata" src="{_e(audio.src)}"></audio>'
        how = (f"The player plays the film from <code>{_e(urllib.parse.unquote(audio.src))}</code>, relative to "
               "this page: keep them side by side. Browsers do not play every format (MKV, AC-3 audio); "
               "<code>--report-audio embed</code> puts the soundtrack in the page instead.")
    made_by = f"speakertag {_e(version)}" if version else "speakertag"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(film_name)}: speakertag report</title>
<link rel="icon" href="data:,">
<style>{_STYLE}</style>
</head>
<body>
<h1>{_e(film_name)}</h1>
<ul class="meta">
<li>{_e(result.input)}, {clock(result.duration_s, with_hours)} long; made by {made_by}</li>
{voices}
</ul>
<figure>
<img id="plot" src="{png_uri}" width="{plot.width_px}" height="{plot.height_px}"
 data-left="{plot.axes_left_frac:.5f}" data-right="{plot.axes_right_frac:.5f}" data-end="{plot.end_s:.3f}"
 alt="Score over time for each voice, with its threshold and segments">
<figcaption>Score of each 0.5 s of the film (the mean of the 2 s windows covering it); where it
stays above the dashed threshold the voice is tagged (shaded). A tagged stretch reaches a little
beyond that where a single window still sounds like the voice and the sound is as loud as the
speech inside. Click the plot or a row to listen.</figcaption>
</figure>
<div class="player">
{source}
<p class="note" id="audio-note">{how}</p>
</div>
<table id="segments">
<thead><tr><th class="num">#</th><th class="num">start</th><th class="num">end</th><th class="num">duration</th>
<th>voice</th><th class="num">score</th></tr></thead>
<tbody>
{segment_rows(segments)}
</tbody>
</table>
<script>{_SCRIPT}</script>
</body>
</html>
"""
