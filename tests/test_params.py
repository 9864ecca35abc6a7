import json
import subprocess
import sys
from dataclasses import FrozenInstanceError, replace

import pytest

from speakertag.params import AudioParams, Params, ParamsMismatch


def test_round_trip_through_json():
    p = Params()
    p = replace(p, encoder=replace(p.encoder, channels=64, dilations=(2, 5)),
                train=replace(p.train, snr_db_range=(5.0, 15.0), max_steps=7))
    back = Params.from_dict(json.loads(json.dumps(p.to_dict())))  # lists come back as tuples
    assert back == p
    assert back.encoder.dilations == (2, 5)
    assert back.train.snr_db_range == (5.0, 15.0)


def test_derived_values():
    a = AudioParams()
    assert a.frame_s == pytest.approx(256 / 22050)
    assert a.window_s == pytest.approx(2.0, abs=0.01)
    assert a.hop_s == pytest.approx(0.5, abs=0.01)
    assert a.window_samples == 44800  # 171 hops of 256 samples and one 1024-sample FFT frame
    assert a.window_samples / a.sample_rate_hz == pytest.approx(2.03, abs=0.005)
    # derived values are properties, not stored: they do not appear in the saved dict
    assert "window_s" not in Params().to_dict()["audio"]


def test_frozen():
    with pytest.raises(FrozenInstanceError):
        Params().audio.n_mels = 64


@pytest.mark.parametrize("change", [
    lambda d: d["audio"].update(sample_rate=16000),  # unknown key in a group
    lambda d: d.update(extra={}),  # unknown group
    lambda d: d.pop("tag"),  # missing group
    lambda d: d["train"].pop("edge_quantile"),  # a missing key does not take its default
])
def test_unknown_or_missing_keys_rejected(change):
    d = Params().to_dict()
    change(d)
    with pytest.raises(ParamsMismatch):
        Params.from_dict(d)


def test_imports_no_torch_or_faiss():
    code = ("import sys; import speakertag.params; "
            "bad = [m for m in ('torch', 'faiss', 'av', 'librosa') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
