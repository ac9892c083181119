"""Streaming pieces the backends share: cutting a token stream at stop sequences, emitting chunks.

Example::

    stops = StopSequenceFilter(["<|im_end|>"])
    text = "".join([*stops.feed("Paris.<|im_"), *stops.feed("end|>"), *stops.flush()])  # "Paris."
"""

from __future__ import annotations

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.outputs import GenerationChunk


def emit_chunk(text: str, run_manager: CallbackManagerForLLMRun | None) -> GenerationChunk:
    """A streamed piece of text, reported to the run's callbacks."""
    if run_manager:
        run_manager.on_llm_new_token(text)
    return GenerationChunk(text=text)


class StopSequenceFilter:
    """Cut a token stream at the first stop sequence, holding back text that may start one."""

    def __init__(self, stops: list[str]):
        self.stops = [stop for stop in stops if stop]
        self.buffer = ""
        self.stopped = False

    def feed(self, text: str) -> list[str]:
        if self.stopped:
            return []
        self.buffer += text
        cut = min((index for stop in self.stops if (index := self.buffer.find(stop)) >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.buffer = self.buffer[:cut], ""
            return [out] if out else []
        hold = max((n for stop in self.stops for n in range(1, len(stop)) if self.buffer.endswith(stop[:n])), default=0)
        out = self.buffer[: len(self.buffer) - hold]
        self.buffer = self.buffer[len(out) :]
        return [out] if out else []

    def flush(self) -> list[str]:
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return [out] if out else []
