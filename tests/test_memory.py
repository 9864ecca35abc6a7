import json
from dataclasses import replace

import faiss
import numpy as np
import pytest

from speakertag.errors import SpeakertagError
from speakertag.memory import (HNSW_MIN_ENTRIES, MEMORY_FILE, Memory, build_index, load_memory, merge_memories,
                               save_memory)
from speakertag.params import Params
from speakertag.scoring import top_k_mean

P = Params()
DIM = P.encoder.embedding_dim


def unit_rows(n, seed=0, dim=DIM):
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_memory(n=20, seed=0, fingerprint="0123456789abcdef", **changes):
    m = Memory(embeddings=unit_rows(n, seed), negatives=unit_rows(7, seed + 100), params=P,
               model_fingerprint=fingerprint, threshold=0.61, name="alice",
               info={"source": f"alice-{seed}", "calibration": {"rule": "f1", "precision": 0.9, "recall": 0.8}},
               edge_threshold=0.72)
    return replace(m, **changes)


def assert_same(a: Memory, b: Memory):
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_array_equal(a.negatives, b.negatives)
    assert (a.params, a.model_fingerprint, a.threshold, a.name, a.info, a.edge_threshold) == \
        (b.params, b.model_fingerprint, b.threshold, b.name, b.info, b.edge_threshold)


def test_round_trip(tmp_path):
    m = make_memory()
    path = save_memory(m, tmp_path / "mem.npz")
    assert path == tmp_path / "mem.npz"
    back = load_memory(path)
    assert_same(back, m)
    assert back.embeddings.dtype == np.float32
    # memories written before edge refinement load without it
    no_edge = replace(m, edge_threshold=None)
    assert load_memory(save_memory(no_edge, tmp_path / "old.npz")).edge_threshold is None


def test_folder_path_uses_memory_npz(tmp_path):
    m = make_memory()
    assert save_memory(m, tmp_path) == tmp_path / MEMORY_FILE
    assert_same(load_memory(tmp_path), m)
    with pytest.raises(SpeakertagError, match="missing"):
        load_memory(tmp_path / "sub")


def rewrite(path, change):
    """Load the npz arrays, let change(arrays, header) edit them, save without re-checksumming."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header"].tobytes().decode())
    change(arrays, header)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("change", [
    lambda a, h: h.update(threshold=0.1),
    lambda a, h: h.update(model_fingerprint="ffffffffffffffff"),
    lambda a, h: h["params"]["tag"].update(top_k=1),
    lambda a, h: a.update(embeddings=a["embeddings"] * np.float32(1.0001)),
    lambda a, h: a.update(embeddings=a["embeddings"][:-1]),
    lambda a, h: a.update(negatives=a["negatives"][::-1].copy()),
])
def test_tampering_fails_the_checksum(tmp_path, change):
    path = save_memory(make_memory(), tmp_path / "mem.npz")
    rewrite(path, change)
    with pytest.raises(SpeakertagError, match="checksum"):
        load_memory(path)


def test_unknown_version_refused(tmp_path):
    path = save_memory(make_memory(), tmp_path / "mem.npz")
    rewrite(path, lambda a, h: h.update(format_version=99))
    with pytest.raises(SpeakertagError, match="format version 99"):
        load_memory(path)


def test_format_3_memory_is_read(tmp_path):
    from speakertag.memory import _checksum

    path = save_memory(make_memory(), tmp_path / "mem.npz")

    def to_format_3(arrays, header):
        header.update(format_version=3)
        del header["params"]["train"]["f1_tolerance"]
        del header["params"]["tag"]["short_edges"]  # format 5's
        del header["params"]["train"]["span_degrade_probability"]  # format 6's
        del header["params"]["train"]["film_bed_stretches"]
        header.pop("checksum")
        header["checksum"] = _checksum(arrays["embeddings"], arrays["negatives"], header)

    rewrite(path, to_format_3)
    assert load_memory(path).params.train.f1_tolerance == 0.0
    assert load_memory(path).params.tag.short_edges is False
    assert load_memory(path).params.train.span_degrade_probability == 1.0


@pytest.mark.parametrize("content", [b"", b"hello", bytes(range(256)) * 4])
def test_not_a_memory_file(tmp_path, content):
    path = tmp_path / "mem.npz"
    path.write_bytes(content)
    with pytest.raises(SpeakertagError, match="memory"):
        load_memory(path)


def test_pickled_arrays_refused(tmp_path):
    path = tmp_path / "mem.npz"
    np.savez(path, embeddings=np.array([{"a": 1}], dtype=object), negatives=unit_rows(1),
             header=np.frombuffer(b"{}", dtype=np.uint8))
    with pytest.raises(SpeakertagError, match="not a valid speakertag memory"):
        load_memory(path)


def test_other_npz_refused(tmp_path):
    path = tmp_path / "mem.npz"
    np.savez(path, embeddings=unit_rows(3), negatives=unit_rows(1),
             header=np.frombuffer(json.dumps({"format": "other"}).encode(), dtype=np.uint8))
    with pytest.raises(SpeakertagError, match="not a speakertag memory"):
        load_memory(path)


def test_entry_limit_on_save_merge_and_load(tmp_path, monkeypatch):
    import speakertag.memory

    monkeypatch.setattr(speakertag.memory, "MAX_MEMORY_ENTRIES", 40)
    small = make_memory(20)  # 20 target + 7 negative entries
    path = save_memory(small, tmp_path / "small.npz")
    with pytest.raises(SpeakertagError, match="memory would hold 47 entries, more than the limit of 40; "):
        save_memory(make_memory(40), tmp_path / "big.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.npz"]
    with pytest.raises(SpeakertagError, match="the merged memory would hold 54 entries, more than the limit of 40"):
        merge_memories(small, make_memory(20, seed=1))
    monkeypatch.setattr(speakertag.memory, "MAX_MEMORY_ENTRIES", 26)
    with pytest.raises(SpeakertagError, match="small.npz holds 27 entries, more than the limit of 26"):
        load_memory(path)


def test_merge_same_model():
    a, b = make_memory(20, seed=0), make_memory(30, seed=1, threshold=0.9, name="bob")
    m = merge_memories(a, b)
    np.testing.assert_array_equal(m.embeddings, np.concatenate([a.embeddings, b.embeddings]))
    assert len(m.negatives) == len(a.negatives) + len(b.negatives)
    assert (m.threshold, m.name, m.model_fingerprint) == (a.threshold, a.name, a.model_fingerprint)
    assert m.info["merged_from"] == ["alice-0", "alice-1"]


def test_merge_refuses_other_models():
    with pytest.raises(SpeakertagError, match="different models"):
        merge_memories(make_memory(), make_memory(fingerprint="fedcba9876543210"))
    other = replace(P, audio=replace(P.audio, n_mels=64))
    with pytest.raises(SpeakertagError, match="different models"):
        merge_memories(make_memory(), make_memory(params=other))


def test_small_index_is_exact():
    emb = unit_rows(100)
    index = build_index(emb)
    assert isinstance(index, faiss.IndexFlatIP) and index.ntotal == 100
    sims, ids = index.search(emb[:3], 1)
    assert ids[:, 0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)


def clustered_rows(n, n_clusters, spread, rng):
    """Unit vectors around n_clusters random centres (per-dimension noise `spread`)."""
    centres = unit_rows(n_clusters, seed=1)
    x = centres[rng.integers(n_clusters, size=n)] + spread * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_hnsw_is_used_from_the_threshold_on(monkeypatch):
    import speakertag.memory

    monkeypatch.setattr(speakertag.memory, "HNSW_MIN_ENTRIES", 2000)
    assert isinstance(build_index(unit_rows(1999)), faiss.IndexFlatIP)
    index = build_index(unit_rows(2000))
    assert isinstance(index, faiss.IndexHNSWFlat) and index.ntotal == 2000


@pytest.mark.slow  # a large index built twice
def test_hnsw_matches_exact_search():
    # 60k embeddings in 20 clusters, e.g. a memory merged from a few voices and recording
    # conditions; queries drawn like the entries.
    rng = np.random.default_rng(0)
    emb = clustered_rows(HNSW_MIN_ENTRIES + 10_000, 20, 0.08, rng)
    queries = clustered_rows(200, 20, 0.08, rng)
    index = build_index(emb)
    assert isinstance(index, faiss.IndexHNSWFlat)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(emb)
    approx_scores, exact_scores = top_k_mean(index, queries, 5), top_k_mean(exact, queries, 5)
    assert np.mean(np.abs(approx_scores - exact_scores) < 1e-3) >= 0.99
    threshold = float(np.median(exact_scores))
    agree = (approx_scores >= threshold) == (exact_scores >= threshold)
    assert agree[np.abs(exact_scores - threshold) > 1e-3].all()


def resealed(change):
    """change(arrays, header), then the checksum computed again: a file that passes it."""
    from speakertag.memory import _checksum

    def apply(arrays, header):
        change(arrays, header)
        header.pop("checksum")
        header["checksum"] = _checksum(arrays["embeddings"], arrays["negatives"], header)
    return apply


@pytest.mark.parametrize("change, phrase", [  # issue 34, case 13: checksummed, yet out of range
    (lambda a, h: h["params"]["tag"].update(batch_windows=0), "tag.batch_windows = 0 is out of range"),
    (lambda a, h: h["params"]["tag"].update(top_k=0), "tag.top_k = 0 is out of range"),
    (lambda a, h: h["params"]["tag"].update(top_k=-3), "tag.top_k = -3 is out of range"),
    (lambda a, h: h["params"]["tag"].update(negative_weight=float("nan")), "tag.negative_weight = nan"),
    (lambda a, h: h.update(threshold=float("nan")), "threshold is nan"),
    (lambda a, h: a.update(embeddings=a["embeddings"][:0]), "no embeddings"),
    (lambda a, h: a.update(embeddings=np.full_like(a["embeddings"], np.nan)), "NaN"),
])
def test_out_of_range_memory_refused(tmp_path, change, phrase):
    path = save_memory(make_memory(), tmp_path / "mem.npz")
    rewrite(path, resealed(change))
    with pytest.raises(SpeakertagError, match="damaged") as e:
        load_memory(path)
    assert phrase in str(e.value)


def test_huge_rows_refused_from_the_headers(tmp_path):
    """Issue 34, case 8: a small file announcing (1, 600,000,000) negatives is refused before
    anything is read (the check reads the .npy headers only)."""
    import io
    import zipfile

    path = save_memory(make_memory(), tmp_path / "mem.npz")
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 4), np.float32))
    header["shape"] = (1, 600_000_000)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["negatives.npy"] = buf.getvalue() + b"\0" * 64  # the header promises far more than is there
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(SpeakertagError, match=r"damaged: embeddings of shapes .*600000000"):
        load_memory(path)
