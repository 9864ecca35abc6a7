"""The Ray engine's parts that need no Ray: voices shipped as bytes, and the message when Ray
is missing. tests/test_ray.py runs the engine itself on a local Ray cluster."""

import os
import shutil
import subprocess
import sys

import numpy as np

from speakertag.cluster import INSTALL_HINT, ShippedVoices
from speakertag.tagging import VoiceSpec


def test_shipped_voices_load_like_the_folders(tiny_model_dir, tmp_path):
    # two folders holding voices of the same name: labelled by folder name, shipped or not
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "alice")
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "bob")
    spec = VoiceSpec((tmp_path / "models",), device="cpu")
    shipped = ShippedVoices.read(spec)
    shutil.rmtree(tmp_path / "models")  # a worker has no model folder
    voices = shipped.load()
    assert [v.name for v in voices] == ["alice", "bob"]
    assert [v.folder for v in voices] == [tmp_path / "models" / "alice", tmp_path / "models" / "bob"]
    (expected,) = VoiceSpec((tiny_model_dir,), device="cpu").load()
    for v in voices:
        assert v.model.fingerprint == expected.model.fingerprint
        np.testing.assert_array_equal(v.memory.embeddings, expected.memory.embeddings)
        np.testing.assert_array_equal(v.memory.negatives, expected.memory.negatives)
        assert v.memory.threshold == expected.memory.threshold
        assert v.params == expected.params


def test_shipped_voices_key(tiny_model_dir, tmp_path):
    """The key says which voices a worker holds: the same files, folder names and device, the same key."""
    key = ShippedVoices.read(VoiceSpec((tiny_model_dir,))).key
    same = shutil.copytree(tiny_model_dir, tmp_path / tiny_model_dir.name)
    assert ShippedVoices.read(VoiceSpec((same,))).key == key
    renamed = shutil.copytree(tiny_model_dir, tmp_path / "renamed")  # a label may come from the name
    assert ShippedVoices.read(VoiceSpec((renamed,))).key != key
    assert ShippedVoices.read(VoiceSpec((tiny_model_dir,), device="cpu")).key != key
    assert ShippedVoices.read(VoiceSpec((tiny_model_dir,), memory_file=tiny_model_dir / "memory.npz")).key == key


def test_engine_ray_without_ray(tiny_model_dir, tmp_path):
    """Ray not installed: one line saying how to install it, exit code 1, nothing written."""
    hide = tmp_path / "hide"  # first on the path: an `import ray` that fails as a missing Ray does
    (hide / "ray").mkdir(parents=True)
    (hide / "ray" / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    film = tmp_path / "film.wav"
    film.write_bytes(b"RIFF" + bytes(100))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "speakertag", "tag", str(film), "--model", str(tiny_model_dir),
                        "--out-dir", str(tmp_path / "tags"), "--engine", "ray"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == [f"speakertag: error: {INSTALL_HINT}"]
    assert "pip install 'speakertag[ray]'" in INSTALL_HINT
    assert not (tmp_path / "tags").exists()
