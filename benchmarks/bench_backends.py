"""Generation speed of each LLM backend beside raw llama-cpp-python, on the same prompt.

Prints tokens/s per backend and the ratio backend / raw, measured in one run with
the runs interleaved (the machine is shared and noisy; absolute numbers drift).

    .venv/bin/python benchmarks/bench_backends.py [--tokens 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Iterable

from rag.llm import load_local_llm
from rag.models import default_llm_path
from rag.server import LlamaServer
from rag.settings import Settings

PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWrite a long, detailed story about a lighthouse keeper and a storm.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def measure(stream: Callable[[], Iterable[str]], count_tokens: Callable[[str], int]) -> tuple[float, float, int]:
    """(seconds to first token, generation tokens/s after the first token, tokens)."""
    started = time.perf_counter()
    first = None
    pieces = []
    for piece in stream():
        if first is None:
            first = time.perf_counter()
        pieces.append(piece)
    finished = time.perf_counter()
    tokens = max(count_tokens("".join(pieces)) - 1, 1)  # minus the BOS the counter adds
    return first - started, (tokens - 1) / max(finished - first, 1e-9), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    threads = os.cpu_count() or 2
    settings = Settings(temperature=0.0, max_tokens=args.tokens, n_threads=threads, stop=[])
    model = default_llm_path()

    from llama_cpp import Llama

    raw = Llama(str(model), n_ctx=settings.n_ctx, n_batch=settings.n_batch, n_threads=threads, verbose=False)

    def raw_stream() -> Iterable[str]:
        for part in raw(PROMPT, max_tokens=args.tokens, temperature=0.0, stream=True, stop=["<|im_end|>"]):
            yield part["choices"][0]["text"]

    def raw_count(text: str) -> int:
        return len(raw.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    server = LlamaServer(model, threads=threads).start()
    url = server.url
    try:
        backends = {
            "raw llama-cpp-python": (raw_stream, raw_count),
        }
        for name, overrides in (
            ("llamacpp", {}),
            ("gpt4all", {"backend": "gpt4all"}),
            ("llamafile (llama-server)", {"backend": "llamafile", "llamafile_url": url}),
        ):
            local = load_local_llm(settings.with_overrides(**overrides))
            backends[name] = ((lambda llm=local.llm: llm.stream(PROMPT)), raw_count)

        results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in backends}
        for _ in range(args.rounds):
            for name, (stream, count) in backends.items():
                results[name].append(measure(stream, count))
    finally:
        server.stop()

    raw_rate = statistics.median(rate for _, rate, _ in results["raw llama-cpp-python"])
    print(f"SmolLM2-135M Q4_1, {threads} threads, up to {args.tokens} tokens, median of {args.rounds} interleaved rounds")
    print(f"{'backend':<28}{'first token s':>14}{'tokens':>8}{'tok/s':>9}{'ratio vs raw':>14}")
    for name, runs in results.items():
        first = statistics.median(run[0] for run in runs)
        rate = statistics.median(run[1] for run in runs)
        tokens = statistics.median(run[2] for run in runs)
        print(f"{name:<28}{first:>14.3f}{tokens:>8.0f}{rate:>9.1f}{rate / raw_rate:>14.2f}")


if __name__ == "__main__":
    main()
