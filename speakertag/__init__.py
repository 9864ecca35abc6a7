"""speakertag: learn one voice from a few clips, find where it speaks in long recordings.

    from speakertag import load_voice, tag
    voice = load_voice("models/my-voice")
    for seg in tag("film.mkv", voice).segments:
        print(seg.start_s, seg.end_s, seg.score)

    from speakertag import Voice, train
    model, memory, report = train(["film.mkv@190-205,1022-1040"], name="alice")  # moments where alice speaks
    segments = tag("film.mkv", Voice(model, memory)).segments
"""

import sys
import types
from importlib import import_module

# Names are imported on first use, so that `import speakertag.params` (or the CLI's
# --help) does not pull in torch, faiss and FFmpeg.
_WHERE = {
    "SpeakertagError": ".errors", "Params": ".params", "Segment": ".segments",
    "TagResult": ".tagging", "Voice": ".tagging", "load_voice": ".tagging", "tag": ".tagging",
    "LiveTagger": ".tagging", "TagOptions": ".tagging",
    "train": ".train",
}

__all__ = ["LiveTagger", "Params", "Segment", "SpeakertagError", "TagOptions", "TagResult", "Voice", "load_voice", "tag",
           "train"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'speakertag' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # Importing the submodule speakertag.train binds it as attribute "train" of the
        # package; keep `speakertag.train` the function, as an eager import would.
        if name in _WHERE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
