"""speakertag: learn one voice from a few clips, find where it speaks in long recordings.

    from speakertag import load_voice, tag
    voice = load_voice("models/my-voice")
    for seg in tag("film.mkv", voice).segments:
        print(seg.start_s, seg.end_s, seg.score)
"""

from .errors import SpeakertagError
from .params import Params
from .segments import Segment
from .tagging import TagResult, Voice, load_voice, tag
from .train import train

__all__ = ["Params", "Segment", "SpeakertagError", "TagResult", "Voice", "load_voice", "tag", "train"]
