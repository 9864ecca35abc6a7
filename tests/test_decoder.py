"""Decoding in a child process (decoder.py): the same blocks and the same errors as in this one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import EXAMPLE, write_container, write_timed
from speakertag.audio import _clean, decode_blocks, source_blocks
from speakertag.decoder import decoded_in_child
from speakertag.errors import SpeakertagError

FILM = EXAMPLE / "movie01.mp4"


def test_the_child_decodes_as_this_process_does():
    here = np.concatenate(list(decode_blocks(FILM, 22050)))
    there = np.concatenate(list(decoded_in_child(FILM, rate_hz=22050)))
    np.testing.assert_array_equal(there, here)


def test_at_the_source_rate_the_child_mixes_the_centre_and_leaves_the_resampling(tmp_path):
    rng = np.random.default_rng(0)
    six = (0.1 * rng.standard_normal((6, 48000 * 3))).astype(np.float32)
    film = write_container(tmp_path / "film.mkv", [("ac3", six, 48000)])
    here = [(_clean(b, mix.weights), rate) for b, rate, mix in source_blocks(film)]
    there = list(decoded_in_child(film))
    assert [rate for _, rate, _ in there] == [rate for _, rate in here] == [48000]
    assert there[0][0].shape == (1, len(here[0][0])) and there[0][2].choice == "average"
    np.testing.assert_array_equal(there[0][0][0], here[0][0])


def test_the_child_says_which_gaps_it_filled(tmp_path):
    speech, rate = sf.read(str(EXAMPLE / "positive" / "ls_2609__2609-156975-0001.flac"), dtype="float32")
    film = write_timed(tmp_path / "gaps.mkv", [(1.0, speech[:1152 * 20]), (7.44, speech[1152 * 20:1152 * 40])], rate,
                       "flac", video_s=8)
    here, there, at_source_rate = [], [], []
    x = np.concatenate(list(decode_blocks(film, 22050, gaps=here)))
    np.testing.assert_array_equal(np.concatenate(list(decoded_in_child(film, rate_hz=22050, gaps=there))), x)
    list(decoded_in_child(film, gaps=at_source_rate))
    assert here == there == at_source_rate == [(0.0, 1.0), (2.44, 7.44)]


def test_an_error_in_the_child_is_raised_here_with_its_message(tmp_path):
    damaged = tmp_path / "damaged.mkv"
    damaged.write_bytes(FILM.read_bytes()[:4000])
    with pytest.raises(SpeakertagError) as here:
        list(decode_blocks(damaged, 22050))
    with pytest.raises(SpeakertagError) as there:
        list(decoded_in_child(damaged, rate_hz=22050))
    assert str(there.value) == str(here.value)
    with pytest.raises(SpeakertagError, match="stream 3 does not exist"):
        list(decoded_in_child(FILM, stream=3, rate_hz=22050))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the children from /proc")
def test_closing_early_stops_the_child():
    def children() -> set[str]:
        return {c for task in Path("/proc/self/task").iterdir() for c in (task / "children").read_text().split()}

    before = children()
    blocks = decoded_in_child(FILM, rate_hz=22050)
    next(blocks)
    assert len(children() - before) == 1
    blocks.close()
    assert children() == before
