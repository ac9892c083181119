"""The base of every error this package raises on purpose.

The CLI prints a :class:`RagError`'s message (which names the fix) without a
traceback; anything else is a bug and keeps its traceback.
"""


class RagError(Exception):
    """An expected failure whose message tells the user what to do."""
