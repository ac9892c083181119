"""The base of every error this package raises on purpose.

The CLI prints a :class:`RagError`'s message (which names the fix) without a
traceback; anything else is a bug and keeps its traceback.
"""


class RagError(Exception):
    """An expected failure whose message tells the user what to do."""


class EmptyQuestion(RagError, ValueError):
    """A question or search query that is empty or only whitespace (the CLI's exit status 2)."""


def require_question(text: object, what: str = "question", example: str = 'rag ask "When was the lighthouse first lit?"') -> str:
    """``text``, or :class:`EmptyQuestion` when it is empty or whitespace; checked before anything loads."""
    if not isinstance(text, str) or not text.strip():
        raise EmptyQuestion(f"the {what} is empty: give one, e.g. {example}")
    return text


class LLMBackendError(RagError, RuntimeError):
    """The LLM backend failed (server down, error event mid-stream, ...)."""
