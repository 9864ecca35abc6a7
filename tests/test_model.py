import os
import pickle

import pytest
import torch

from speakertag.errors import SpeakertagError
from speakertag.model import MODEL_FILE, embed, load_model, new_model, payload_checksum, save_model
from speakertag.params import FORMAT_VERSION, Params, speakertag_version

P = Params()


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = new_model(P, {"name": "alice", "history": [{"action": "train"}]})
    # Leave the batch-norm running statistics away from their defaults, as training would.
    m.encoder.train()
    with torch.no_grad():
        m.encoder(torch.randn(8, P.audio.n_mels, P.audio.window_frames))
    m.encoder.eval()
    return m


def windows(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, P.audio.n_mels, P.audio.window_frames, generator=g)


def test_embedding_shape_and_unit_norm(model):
    e = embed(model, windows(5))
    assert e.shape == (5, P.encoder.embedding_dim) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(5))
    # window length is not fixed by the encoder: shorter and longer windows embed too
    assert embed(model, torch.randn(2, P.audio.n_mels, 50)).shape == (2, P.encoder.embedding_dim)


def test_embedding_ignores_a_constant_level(model):
    # per-window mean normalisation: a gain (a constant in log-mel) changes nothing (up to the
    # rounding of bfloat16 convolutions, on a CPU that has them)
    w = windows(3)
    torch.testing.assert_close(embed(model, w), embed(model, w + 4.0), atol=1e-4, rtol=0)


def test_save_load_round_trip(model, tmp_path):
    path = save_model(model, tmp_path / "m")
    assert path == tmp_path / "m" / MODEL_FILE
    assert os.listdir(tmp_path / "m") == [MODEL_FILE]  # no temporary file left behind
    back = load_model(tmp_path / "m", "cpu")
    assert back.params == model.params
    assert back.meta == {**model.meta, "speakertag_version": speakertag_version()} and back.name == "alice"
    assert back.fingerprint == model.fingerprint
    w = windows()
    torch.testing.assert_close(embed(back, w), embed(model, w), atol=0, rtol=0)
    assert load_model(path, "cpu").fingerprint == model.fingerprint  # the file itself works too


def test_fingerprint_follows_weights(model):
    before = model.fingerprint
    assert len(before) == 16
    with torch.no_grad():
        model.encoder.head.bias[0] += 1e-6
    assert model.fingerprint != before


def payload_of(path):
    return torch.load(path, weights_only=True)


def test_unknown_format_version(model, tmp_path):
    path = save_model(model, tmp_path)
    payload = payload_of(path)
    payload["format_version"] = 999
    torch.save(payload, path)
    with pytest.raises(SpeakertagError, match="format version 999"):
        load_model(tmp_path, "cpu")


def test_tampered_weights_fail_the_checksum(model, tmp_path):
    path = save_model(model, tmp_path)
    payload = payload_of(path)
    name = next(k for k, v in payload["state_dict"].items() if v.dtype.is_floating_point)
    payload["state_dict"][name].view(-1)[0] += 0.01
    torch.save(payload, path)
    with pytest.raises(SpeakertagError, match="checksum"):
        load_model(tmp_path, "cpu")


ANOTHER_VERSION = rf"made by another version of speakertag \(format {FORMAT_VERSION}\)"


@pytest.mark.parametrize("change, phrase, checksum_again", [
    (lambda p: p.pop("state_dict"), "failed its checksum", False),
    (lambda p: p.pop("checksum"), "failed its checksum", False),
    (lambda p: p["params"]["tag"].update(top_k=50), "failed its checksum", False),  # the params are covered
    (lambda p: p["meta"].update(name="mallory"), "failed its checksum", False),  # and so is the metadata
    (lambda p: p["state_dict"].pop(next(iter(p["state_dict"]))), "damaged", True),  # strict loading
    (lambda p: p["params"]["audio"].update(n_mels=64), "damaged", True),  # params that do not fit the weights
    (lambda p: p["params"]["encoder"].update(depth=3), ANOTHER_VERSION + ": unknown encoder params: depth", True),
    (lambda p: p["params"]["train"].pop("edge_quantile"), ANOTHER_VERSION + ": missing train params: edge_quantile",
     True),  # not a default in its place
    (lambda p: p["params"].pop("augment"), ANOTHER_VERSION, True),
    (lambda p: p.update(format="something-else"), "not a speakertag model", False),
])
def test_damaged_payloads(model, tmp_path, change, phrase, checksum_again):
    """checksum_again: the file's checksum is made to fit the change (another version's file, or a
    careful forger): the other checks still refuse it."""
    path = save_model(model, tmp_path)
    payload = payload_of(path)
    change(payload)
    if checksum_again:
        payload["checksum"] = payload_checksum(payload)
    torch.save(payload, path)
    with pytest.raises(SpeakertagError, match=phrase):
        load_model(tmp_path, "cpu")


def test_format_3_files_are_read_with_format_4s_additions_at_their_old_values(model, tmp_path):
    """A format 3 file has no train.f1_tolerance: it is read as 0.0 (the plain best F1 it was
    calibrated with); a format 3 file that has it is refused."""
    path = save_model(model, tmp_path)
    payload = payload_of(path)
    payload["format_version"] = 3
    del payload["params"]["train"]["f1_tolerance"]
    del payload["params"]["tag"]["short_edges"]  # format 5's
    del payload["params"]["train"]["span_degrade_probability"]  # format 6's
    del payload["params"]["train"]["film_bed_stretches"]
    payload["checksum"] = payload_checksum(payload)
    torch.save(payload, path)
    assert load_model(tmp_path, "cpu").params.train.f1_tolerance == 0.0
    assert load_model(tmp_path, "cpu").params.tag.short_edges is False
    assert load_model(tmp_path, "cpu").params.train.span_degrade_probability == 1.0
    payload["params"]["train"]["f1_tolerance"] = 0.02
    payload["checksum"] = payload_checksum(payload)
    torch.save(payload, path)
    with pytest.raises(SpeakertagError, match="format 3 hold f1_tolerance"):
        load_model(tmp_path, "cpu")


class RunsCode:
    """Unpickling this object would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch.save", "torch.save-legacy", "pickle"])
def test_code_in_a_model_file_is_refused_and_not_run(tmp_path, how):
    marker = tmp_path / "MARKER"
    path = tmp_path / MODEL_FILE
    payload = {"format": "speakertag-model", "format_version": FORMAT_VERSION, "evil": RunsCode(marker)}
    if how == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=how == "torch.save")
    # torch.save files name what they would run; a plain pickle is not a model file at all
    with pytest.raises(SpeakertagError, match="refused to load .* it would run posix.system when loaded"
                       if how.startswith("torch.save") else "not a valid speakertag model"):
        load_model(tmp_path, "cpu")
    assert not marker.exists()


def test_the_malicious_payload_really_runs_code(tmp_path):
    # guards the test above: unpickled without restrictions, the payload does touch the marker
    marker = tmp_path / "MARKER"
    pickle.loads(pickle.dumps(RunsCode(marker)))
    assert marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a model at all\n", bytes(range(256)) * 8])
def test_not_a_model_file(tmp_path, content):
    (tmp_path / MODEL_FILE).write_bytes(content)
    with pytest.raises(SpeakertagError, match="model"):
        load_model(tmp_path, "cpu")


def test_missing_model_file(tmp_path):
    with pytest.raises(SpeakertagError, match=f"{MODEL_FILE} is missing"):
        load_model(tmp_path, "cpu")
    with pytest.raises(SpeakertagError, match="missing"):
        load_model(tmp_path / "nope.pt", "cpu")


def test_overlapping_windows_path_equals_per_window_forward():
    """The film path shares the first convolution across overlapping windows: same numbers."""
    from speakertag.features import slice_windows

    p = Params()
    model = _trained_looking(p)
    frames = torch.randn(p.audio.n_mels, p.audio.window_frames + 20 * p.audio.hop_frames) * 3 - 5
    windows = slice_windows(frames, p.audio)
    torch.testing.assert_close(embed(model, windows, p.audio.hop_frames), embed(model, windows), atol=1e-5, rtol=0)


def test_short_windows_equal_their_own_forward():
    """embed_keeping_frames and embed_short: the long windows as embed gives them, and each short
    window (half-hop blocks pooled under a shared shift) as the encoder embeds it alone, whichever
    runs of windows are asked for."""
    from speakertag.features import slice_windows
    from speakertag.model import embed_keeping_frames, embed_short

    p = Params()
    a = p.audio
    model = _trained_looking(p)
    frames = torch.randn(a.n_mels, a.window_frames + 20 * a.hop_frames) * 3 - 5
    windows = slice_windows(frames, a)
    long, kept = embed_keeping_frames(model, windows, a.hop_frames)
    short, index = embed_short(model, kept, [(0, len(windows))], a.hop_frames)
    assert index.tolist() == list(range(2 * len(windows)))
    some, some_index = embed_short(model, kept, [(2, 4), (7, 8)], a.hop_frames)
    assert some_index.tolist() == [4, 5, 6, 7, 14, 15]
    torch.testing.assert_close(some, short[some_index], atol=1e-5, rtol=0)
    torch.testing.assert_close(long, embed(model, windows, a.hop_frames), atol=1e-5, rtol=0)
    ctx, half = model.encoder.context_frames, a.hop_frames // 2
    for j in (0, 7, len(windows) - 1):
        first = frames[:, j * a.hop_frames:j * a.hop_frames + half + a.hop_frames + 2 * ctx]
        second = frames[:, j * a.hop_frames + half:(j + 2) * a.hop_frames + 2 * ctx]
        # float32 sums taken in another order and under another shift: close, not bit-equal
        torch.testing.assert_close(short[2 * j], embed(model, first[None])[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(short[2 * j + 1], embed(model, second[None])[0], atol=1e-4, rtol=0)


def _trained_looking(p: Params):
    """A new model in eval mode with non-trivial batch-norm statistics, as after training."""
    model = new_model(p)
    model.encoder.eval()
    with torch.no_grad():
        for bn in (m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm1d)):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return model


def test_folded_convolutions_compute_the_batch_norm_layers():
    """Eval mode folds each batch-norm into its convolution: the same frame features as the layers."""
    p = Params()
    enc = _trained_looking(p).encoder
    enc.force_float32 = True  # the layers' own number type, on any CPU
    frames = torch.randn(2, p.audio.n_mels, 60) * 3 - 5
    with torch.no_grad():
        x = enc.first(enc.input_norm(frames - frames.mean(dim=1, keepdim=True)))
        outs = []
        for d, block in zip(enc.dilations, enc.blocks):
            x = x[:, :, d:-d] + block(x)
            outs.append(x)
        n = outs[-1].shape[-1]
        h = torch.cat([o[:, :, (o.shape[-1] - n) // 2:(o.shape[-1] - n) // 2 + n] for o in outs], dim=1)
        folded_h, folded_logits = enc.frame_features(frames)
    torch.testing.assert_close(folded_h, h, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(folded_logits, enc.attention(h), atol=1e-4, rtol=1e-5)


def test_bfloat16_convolutions_where_the_cpu_has_them_embed_as_float32_does():
    from speakertag.model import cpu_has_bf16

    p = Params()
    model = _trained_looking(p)
    cpu = torch.device("cpu")
    assert model.encoder.eval_dtype(cpu) == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    assert model.embeds_fast == cpu_has_bf16()  # the tagger then computes features on the encoder's thread
    w = windows(8)
    fast = embed(model, w)
    model.encoder.force_float32 = True
    assert model.encoder.eval_dtype(cpu) == torch.float32 and not model.embeds_fast
    exact = embed(model, w)
    assert fast.dtype == torch.float32 and float((fast * exact).sum(1).min()) > 0.999  # cosine of the two


@pytest.mark.parametrize("spread", [1.0, 100.0])  # 100: past SHARED_SHIFT_MAX, pooled window by window
def test_sliding_pooled_stats_equal_each_window_pooled_alone(spread):
    from speakertag.model import Encoder

    h, logits = torch.randn(8, 400), torch.randn(8, 400) * spread
    width, hop = 150, 43
    got = Encoder.sliding_pooled_stats(h, logits, width, hop, chunk_windows=3)
    want = torch.cat([Encoder.pooled_stats(h[None, :, j:j + width], logits[None, :, j:j + width])
                      for j in range(0, 400 - width + 1, hop)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
