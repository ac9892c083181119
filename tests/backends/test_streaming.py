"""StopSequenceFilter: a token stream cut at the first stop sequence, even one split across tokens."""

from __future__ import annotations

from rag.backends.streaming import StopSequenceFilter


def run_filter(stops: list[str], pieces: list[str]) -> str:
    stop_filter = StopSequenceFilter(stops)
    out = [text for piece in pieces for text in stop_filter.feed(piece)]
    return "".join(out + stop_filter.flush())


def test_stop_filter_cuts_at_stop_split_across_tokens():
    assert run_filter(["<|im_end|>"], ["Paris is", " the capital.<|im", "_end|>", " junk"]) == "Paris is the capital."


def test_stop_filter_releases_held_prefix_that_was_not_a_stop():
    assert run_filter(["<|im_end|>"], ["a <|i", "dea"]) == "a <|idea"


def test_stop_filter_without_stops_passes_everything():
    assert run_filter([], ["a", "b"]) == "ab"
