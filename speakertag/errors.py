"""The one exception type that reaches users as a one-line message."""


class SpeakertagError(Exception):
    """A problem with the user's input or files, explained in one line."""
