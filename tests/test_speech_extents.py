"""scripts/speech_extents.py: a reference segment cut to the words that the centre channel of a
5.1 track holds, with the room tone around them left out."""

import sys
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from conftest import EXAMPLE

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from speech_extents import centre_level_db, speech_inside  # noqa: E402


def write_51(path: Path, track: np.ndarray, rate: int) -> None:
    """(n, 6) float samples -> a FLAC 5.1 track (FL FR FC LFE BL BR) in Matroska."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("flac", rate=rate, layout="5.1")
        pcm = (np.clip(track, -1, 1) * 32767).astype(np.int16)
        for i in range(0, len(pcm), 4096):
            frame = av.AudioFrame.from_ndarray(pcm[i:i + 4096].reshape(1, -1), format="s16", layout="5.1")
            frame.sample_rate, frame.pts = rate, i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_a_clip_padded_with_room_tone_is_cut_to_its_words(tmp_path):
    words, rate = sf.read(EXAMPLE / "positive" / "ls_2609__2609-156975-0003.flac", dtype="float32")
    rng = np.random.default_rng(0)
    room = 0.003 * rng.standard_normal(round(0.8 * rate)).astype(np.float32)  # about 40 dB under the words
    silence = np.zeros(round(0.5 * rate), np.float32)
    centre = np.concatenate([silence, room, words, room, silence])
    track = 0.1 * rng.standard_normal((len(centre), 6)).astype(np.float32)  # loud noise on the other channels
    track[:, 2] = centre
    write_51(tmp_path / "film.mka", track, rate)
    clip_s = (0.5, 0.5 + (2 * len(room) + len(words)) / rate)  # the reference: the padded clip's extent
    (start, end), = speech_inside([clip_s], centre_level_db(tmp_path / "film.mka"), below_db=25.0)
    words_s = (1.3, 1.3 + len(words) / rate)
    assert words_s[0] <= start < end <= words_s[1]  # the room tone left out
    # the words found as in the clip alone (which starts with half a second of its own quiet)
    write_51(tmp_path / "clip.mka", np.pad(words[:, None], ((0, 0), (2, 3))), rate)
    (alone_start, alone_end), = speech_inside([(0.0, len(words) / rate)], centre_level_db(tmp_path / "clip.mka"), 25.0)
    assert abs(start - 1.3 - alone_start) < 0.05 and abs(end - 1.3 - alone_end) < 0.05
    assert end - start > 0.6 * len(words) / rate


def test_a_segment_without_room_tone_stays_and_a_click_is_no_word():
    level = np.full(300, -60.0)
    level[100:200] = -20.0  # words from 1 s to 2 s
    level[20] = -10.0  # a 10 ms click
    assert speech_inside([(1.0, 2.0)], level, 25.0) == [(1.0, 2.0)]
    assert speech_inside([(0.1, 2.5)], level, 25.0) == [(1.0, 2.0)]
