"""Rewrite model folders (model.pt, memory.npz) of format version 2 in the current format.

    python scripts/upgrade_format.py models/base [MORE_MODEL_FOLDERS ...]

Version 3 stores numbers that version 2 kept as constants in the code (the speech band, the
edge quantile, the film-like degradation, the pool size, the training checks); each takes the
value version 2 used, so a model and its memory give the same results. The weights and the
embeddings are copied unchanged; the encoder's outputs on random windows are checked to be
identical before and after, and each file is written atomically in place.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from speakertag.memory import MEMORY_FILE, load_memory, save_memory  # noqa: E402
from speakertag.model import MODEL_FILE, Encoder, Model, embed, load_model, save_model  # noqa: E402
from speakertag.params import FORMAT_VERSION, Params  # noqa: E402

# What version 3 added to the params of version 2, at the values version 2 had in its code.
ADDED = {
    "audio": ("speech_band_hz",),
    "train": ("negative_augment_probability", "pool_windows", "edge_quantile", "min_target_s", "max_negative_share",
              "impostor_share"),
    "augment": None,  # the whole group
}


def upgraded_params(old: dict) -> Params:
    """Version 2's params dict -> Params, the keys version 3 added at their defaults (version 2's constants)."""
    d = {group: dict(values) for group, values in old.items()}
    defaults = Params().to_dict()
    for group, keys in ADDED.items():
        if keys is None:
            assert group not in d, f"{group} params already there: not a version 2 file"
            d[group] = defaults[group]
        else:
            for k in keys:
                assert k not in d[group], f"{group}.{k} already there: not a version 2 file"
                d[group][k] = defaults[group][k]
    return Params.from_dict(d, 3)  # any other difference is refused here; later formats' additions filled in


def upgrade_folder(folder: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        payload = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
    assert payload["format"] == "speakertag-model" and payload["format_version"] == 2, payload.get("format_version")
    params = upgraded_params(payload["params"])
    encoder = Encoder(params.audio, params.encoder)
    encoder.load_state_dict(payload["state_dict"], strict=True)
    before = Model(params, encoder.eval(), dict(payload["meta"]))
    assert before.fingerprint == payload["fingerprint"], "the version 2 file's weights do not match its fingerprint"
    meta = {**payload["meta"], "upgraded": "format version 2 to 3 (scripts/upgrade_format.py)"}

    memory_path = folder / MEMORY_FILE
    memory = None
    if memory_path.exists():
        with np.load(memory_path, allow_pickle=False) as z:
            header = json.loads(z["header"].tobytes().decode())
            embeddings, negatives = z["embeddings"], z["negatives"]
        assert header["format_version"] == 2 and header["model_fingerprint"] == payload["fingerprint"]
        # The version 2 header and checksum are checked by the version 2 code; here, the arrays are copied as they are.
        from speakertag.memory import Memory

        memory = Memory(embeddings, negatives, upgraded_params(header["params"]), header["model_fingerprint"],
                        float(header["threshold"]), header.get("name", "target"), header.get("info", {}),
                        header.get("edge_threshold"))

    save_model(Model(params, encoder, meta), folder)
    after = load_model(folder, "cpu")
    windows = torch.randn(8, params.audio.n_mels, params.audio.window_frames, generator=torch.Generator().manual_seed(0))
    same = torch.equal(embed(before, windows), embed(after, windows))
    film = torch.randn(40, params.audio.n_mels, params.audio.window_frames)
    same = same and torch.equal(embed(before, film, params.audio.hop_frames), embed(after, film, params.audio.hop_frames))
    assert same and after.fingerprint == payload["fingerprint"], "the encoder's outputs changed"
    print(f"{folder / MODEL_FILE}: format {FORMAT_VERSION}, fingerprint {after.fingerprint}, encoder outputs identical")
    if memory is not None:
        save_memory(memory, memory_path)
        back = load_memory(memory_path)
        assert np.array_equal(back.embeddings, embeddings) and np.array_equal(back.negatives, negatives)
        print(f"{memory_path}: format {FORMAT_VERSION}, {len(embeddings)} + {len(negatives)} entries unchanged")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    for folder in ap.parse_args().folders:
        upgrade_folder(folder)


if __name__ == "__main__":
    main()
