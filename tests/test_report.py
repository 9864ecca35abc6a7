"""The visual report: pure rendering functions, the CLI options, and the page in a real browser."""

import base64
import html
import json
import re
import shutil
import struct
import tempfile
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from conftest import speech_like, write_audio
from speakertag.report import (EMBED_BIT_RATE, ReportAudio, clock, embed_audio, link_audio,
                               precise_clock, render_html, render_plot, segment_rows, track_cells)
from speakertag.segments import Segment
from speakertag.tagging import TagResult, VoiceTrack
from test_cli import assert_fails, run_cli

HOP_S, WINDOW_S = 0.5, 2.0
EVIL_FILM = 'dir/<script>alert("film")</script> & co.mkv'
EVIL_VOICE = '<img src=x onerror=alert(1)> "Al & Bo"'


def make_result(names=("alice",), duration_s: float = 60.0, input_path: str = "film.mkv") -> TagResult:
    """A TagResult with a few segments per voice and matching window scores."""
    n_windows = int((duration_s - WINDOW_S) / HOP_S) + 1
    tracks = []
    for k, name in enumerate(names):
        rng = np.random.default_rng(k)
        scores = rng.uniform(-0.5, 0.2, n_windows).astype(np.float32)
        segments = []
        for start_s in (5.0 + k, 20.0 + 3 * k, 41.5):
            j = int(start_s / HOP_S)
            scores[j:j + 8] = 0.8
            segments.append(Segment(start_s, start_s + 4.5, 0.8, name))
        tracks.append(VoiceTrack(name, 0.5, None, scores, segments))
    cell_db = np.full(n_windows + round(WINDOW_S / HOP_S) - 1, -20.0, np.float32)
    return TagResult(input_path, duration_s, WINDOW_S, HOP_S, cell_db, tracks, {})


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# --- pure functions ---------------------------------------------------------------------------

def test_clocks():
    assert clock(186.4, with_hours=False) == "03:06"
    assert clock(59.6, with_hours=False) == "01:00"
    assert clock(4000.0, with_hours=True) == "1:06:40"
    assert precise_clock(186.54) == "03:06.5"
    assert precise_clock(59.96) == "01:00.0"
    assert precise_clock(4000.0) == "1:06:40.0"


@pytest.mark.parametrize("duration_s, end_s", [
    (60.3, 60.0),  # the audio after the last whole window has no score
    (59.2, 59.2),  # a film shorter than its cells (never from tag(), which only scores whole windows)
])
def test_track_cells_lie_in_the_film(duration_s, end_s):
    r = make_result(duration_s=60.3)
    r = TagResult(r.input, duration_s, r.window_s, r.hop_s, r.cell_db, r.tracks, {})
    edges_s, scores = track_cells(r, r.tracks[0])
    assert len(edges_s) == len(scores) + 1
    assert edges_s[0] == 0.0 and edges_s[-1] == pytest.approx(end_s)
    assert np.all(np.diff(edges_s) > 0)


@pytest.mark.parametrize("names", [("alice",), ("alice", "bob", "carol")])
def test_plot_is_a_png(names):
    r = make_result(names)
    image = render_plot(r)
    assert png_size(image.png) == (image.width_px, image.height_px)
    assert 0 < image.axes_left_frac < image.axes_right_frac < 1 and image.end_s == 60.0
    assert image.png[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_of_a_long_film_with_odd_names():
    # "$" would start a formula in matplotlib; hours on the axis
    r = make_result(("$alice$", "名前"), duration_s=2 * 3600.0, input_path="a $film$ 名.mkv")
    png_size(render_plot(r).png)


def test_one_row_per_segment_in_time_order():
    r = make_result(("alice", "bob"))
    page = render_html(r, render_plot(r), ReportAudio(src="film.mkv"))
    starts = [float(s) for s in re.findall(r'<tr data-start="([\d.]+)"', page)]
    assert starts == [s.start_s for s in r.segments] and len(starts) == 6
    assert segment_rows([]) == ""


def test_stretches_without_audio_are_named():
    r = make_result()
    assert "No audio" not in render_html(r, render_plot(r), ReportAudio(src="film.mkv"))
    r = replace(r, gaps=((0.0, 30.0), (41.0, 51.0)))
    assert "<li>No audio at 00:00-00:30, 00:41-00:51 (" in render_html(r, render_plot(r), ReportAudio(src="film.mkv"))


def test_user_strings_are_escaped():
    r = make_result((EVIL_VOICE,), input_path=EVIL_FILM)
    page = render_html(r, render_plot(r), link_audio(EVIL_FILM, "report.html"))
    for raw in ("<script>alert", "<img src=x", '"Al & Bo"'):
        assert raw not in page
    assert html.escape(Path(EVIL_FILM).name) in page and html.escape(EVIL_VOICE) in page
    assert page.count("<script") == 1  # only the page's own script


def test_page_is_self_contained():
    r = make_result()
    page = render_html(r, render_plot(r), ReportAudio(src="film.mkv"), "1.2.3")
    assert not re.search(r"\b(?:https?|ftp|file|wss?):|@import|url\(|(?:src|href)=\"//", page)
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(links) == 3 and all(a.startswith("data:") or a == "film.mkv" for a in links)
    assert 'src="data:image/png;base64,' in page and "speakertag 1.2.3" in page


def test_embedded_audio_is_carried_in_the_page():
    r = make_result()
    page = render_html(r, render_plot(r), ReportAudio(data=b"\x1aE\xdf\xa3 opus", mime_type="audio/webm"))
    assert 'id="audio-data"' in page and 'data-type="audio/webm"' in page
    assert base64.b64encode(b"\x1aE\xdf\xa3 opus").decode() in page


def test_link_audio_is_relative_and_quoted(tmp_path):
    film = tmp_path / "films" / "my film #1 & 2%.mkv"
    assert link_audio(film, tmp_path / "out" / "r.html").src == "../films/my%20film%20%231%20%26%202%25.mkv"
    assert link_audio(film, tmp_path / "films" / "r.html").src == "my%20film%20%231%20%26%202%25.mkv"


def test_embed_audio_is_small_mono_opus(write_wav):
    import av

    film = write_wav("clip.wav", speech_like(6.0, 44100), 44100)
    seen = []
    audio = embed_audio(film, progress=seen.append)
    assert audio.mime_type == "audio/webm" and audio.data[:4] == b"\x1aE\xdf\xa3"  # EBML (WebM)
    assert seen and seen[-1] == pytest.approx(6.0, abs=0.01)
    assert len(audio.data) < 6.0 * EMBED_BIT_RATE / 8 * 1.5 + 2000
    path = Path(film).with_suffix(".webm")
    path.write_bytes(audio.data)
    with av.open(str(path)) as c:
        (s,) = c.streams.audio
        assert s.codec_context.name == "opus" and s.codec_context.layout.nb_channels == 1
        n = sum(f.samples for f in c.decode(s))
        assert n / s.rate == pytest.approx(6.0, abs=0.1)


# --- command line -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip(tmp_path_factory, example):
    """20 s of the example film around a target segment, as WAV."""
    from speakertag.audio import load_audio

    rate_hz = 22050
    return write_audio(tmp_path_factory.mktemp("clip") / "excerpt.wav",
                       load_audio(example / "movie01.mp4", rate_hz)[50 * rate_hz:70 * rate_hz], rate_hz)


@pytest.mark.parametrize("args, phrase", [
    (["--report", "r.html", "--out-dir", "tags"], "--report and --plot take a single input file"),
    (["--plot", "p.png", "excerpt.wav"], "--report and --plot take a single input file"),
    (["--report-audio", "embed"], "--report-audio needs --report"),
    (["--out", "x.html", "--report", "x.html"], "must name different files"),
])
def test_report_usage(tiny_model_dir, clip, args, phrase):
    r = run_cli("tag", "excerpt.wav", "--model", tiny_model_dir, *args, cwd=clip.parent)
    assert_fails(r, phrase, exit_code=2)
    assert sorted(p.name for p in clip.parent.iterdir()) == ["excerpt.wav"]


@pytest.mark.slow  # a tagging process
def test_report_in_missing_folder(tiny_model_dir, clip, tmp_path):
    r = run_cli("tag", clip, "--model", tiny_model_dir, "--report", tmp_path / "nope" / "r.html")
    assert_fails(r, "output folder does not exist")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a tagging process
def test_plot_and_report_files(tiny_model_dir, clip, tmp_path):
    r = run_cli("tag", clip, "--model", tiny_model_dir, "--threshold", "-1.5", "--plot", tmp_path / "p.png",
                "--report", tmp_path / "r.html", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1  # the usual text output, one segment
    assert r.stderr.splitlines()[-2:] == [f"plot written to {tmp_path / 'p.png'}",
                                          f"report written to {tmp_path / 'r.html'}"]
    png_size((tmp_path / "p.png").read_bytes())
    page = (tmp_path / "r.html").read_text()
    assert page.count("<tr data-start=") == 1
    src = re.search(r'<audio id="player"[^>]* src="([^"]*)"', page)[1]
    assert not src.startswith("/") and (tmp_path / unquote(html.unescape(src))).resolve() == clip.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "r.html"]


# --- the page in a real browser ---------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through its WebDriver, with the page's console log kept."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="speakertag-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--mute-audio", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_report(driver, page: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(page.as_uri())
    # the player has read the audio's header: its source was found and can be played
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "const p = document.getElementById('player'); return p.readyState >= 1 || p.error !== null"))
    error = driver.execute_script("const e = document.getElementById('player').error; return e && e.code")
    assert error is None, f"the player cannot play its source (MediaError {error})"


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


@pytest.mark.slow  # a browser
def test_report_in_browser(browser, tiny_model_dir, example, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from speakertag.segments import cell_scores
    from speakertag.tagging import load_voice, tag

    # A film name that needs escaping in HTML and quoting in a URL, in another folder than the report.
    film = tmp_path / "films" / "movie #1 & <the> 'cut' 100%.mp4"
    film.parent.mkdir()
    shutil.copy(example / "movie01.mp4", film)
    # A threshold that gives several segments whatever the tiny model learnt: the top fifth of the scores.
    voice = load_voice(tiny_model_dir)
    scores = cell_scores(tag(film, voice).tracks[0].window_scores, voice.model.params.audio)
    threshold = f"{float(np.quantile(scores, 0.8)):.4f}"
    out, page = tmp_path / "tags.json", tmp_path / "report" / "report.html"
    page.parent.mkdir()
    r = run_cli("tag", film, "--model", tiny_model_dir, "--threshold", threshold, "--format", "json",
                "--out", out, "--report", page, "-q")
    assert r.returncode == 0, r.stderr
    segments = json.loads(out.read_text())["segments"]
    assert len(segments) >= 2

    open_report(browser, page)
    assert browser.title.startswith(film.name)
    rows = browser.find_elements(By.CSS_SELECTOR, "#segments tbody tr")
    assert len(rows) == len(segments)
    for row, s in zip(rows, segments):
        assert float(row.get_attribute("data-start")) == pytest.approx(s["start"], abs=1e-3)
        assert float(row.get_attribute("data-end")) == pytest.approx(s["end"], abs=1e-3)
        assert row.find_elements(By.TAG_NAME, "td")[4].text == s["label"]
    # Record where each seek lands, then click each row.
    browser.execute_script("window.seeks = []; document.getElementById('player')"
                           ".addEventListener('seeking', (e) => window.seeks.push(e.target.currentTime));")
    for n, (row, s) in enumerate(zip(rows, segments), 1):
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", row)
        row.click()
        WebDriverWait(browser, 10).until(lambda d: len(d.execute_script("return window.seeks")) >= n)
        assert browser.execute_script("return window.seeks")[-1] == pytest.approx(s["start"], abs=0.05)
    assert browser.execute_script("return document.getElementById('player').paused") is False
    # A click on the plot plays from the time under the pointer (here the image's middle).
    plot = browser.find_element(By.ID, "plot")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", plot)
    left, right, end_s = (float(plot.get_attribute(f"data-{k}")) for k in ("left", "right", "end"))
    ActionChains(browser).move_to_element(plot).click().perform()
    n = len(segments) + 1
    WebDriverWait(browser, 10).until(lambda d: len(d.execute_script("return window.seeks")) >= n)
    pixel_s = end_s / (right - left) / plot.size["width"]
    assert browser.execute_script("return window.seeks")[-1] == pytest.approx(
        (0.5 - left) / (right - left) * end_s, abs=2 * pixel_s)
    assert console_errors(browser) == []


@pytest.mark.slow  # a browser
def test_report_with_embedded_audio_in_browser(browser, tiny_model_dir, clip, tmp_path):
    page = tmp_path / "r.html"
    r = run_cli("tag", clip, "--model", tiny_model_dir, "--threshold", "-1.5", "--report", page,
                "--report-audio", "embed", "-q")
    assert r.returncode == 0, r.stderr
    open_report(browser, page)
    assert browser.execute_script("return document.getElementById('player').duration") == pytest.approx(20.0, abs=0.1)
    browser.find_element("css selector", "#segments tbody tr").click()
    assert console_errors(browser) == []
