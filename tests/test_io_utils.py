import os
import stat

import pytest

from speakertag.io_utils import atomic_write_bytes, atomic_write_text


def test_writes_and_replaces(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "first\n")
    atomic_write_text(path, "é second\n")
    assert path.read_bytes() == "é second\n".encode("utf-8")
    assert os.listdir(tmp_path) == ["out.txt"]


def test_permissions_follow_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "out.bin", b"\x00\x01")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == 0o644


def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(OSError, match=f"output folder does not exist: {missing}"):
        atomic_write_text(missing / "out.txt", "x")


def test_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_growing_output_keeps_an_existing_file_until_commit(tmp_path):
    """issue 34, case 3: pieces over an existing file go beside it; a failed run leaves it whole."""
    from speakertag.io_utils import GrowingOutput

    old = tmp_path / "rec.csv"
    old.write_text("mine\n")
    out = GrowingOutput(old)
    out.write("a\n")
    assert old.read_text() == "mine\n"
    out.discard()
    assert os.listdir(tmp_path) == ["rec.csv"] and old.read_text() == "mine\n"
    out = GrowingOutput(old)
    out.write("a\n")
    out.write("b\n")
    out.commit()
    assert os.listdir(tmp_path) == ["rec.csv"] and old.read_text() == "a\nb\n"
    new = tmp_path / "new.csv"
    out = GrowingOutput(new)
    out.write("a\n")
    assert new.read_text() == "a\n"  # a new file grows in place, visible as it comes
    out.discard()
    assert os.listdir(tmp_path) == ["rec.csv"]
    GrowingOutput(new).discard()  # nothing written: nothing made
    assert not new.exists()
