"""Answer latency: the `rag ask` path beside the same prompt sent straight to llama-cpp-python.

The `rag ask` path is what the command runs once its models are loaded: embed the question,
search Chroma, fit the chunks to the context budget, render the prompt, stream the answer.
The raw path sends the final prompt of that run straight to the ``llama_cpp.Llama`` the
backend wraps, with the same sampling settings. Both start every run with an empty KV cache; runs are interleaved (the
machine is shared and noisy). Prints time to first token, total time, generation tokens/s
and its ratio to raw (target >= 0.95), and the tokens of the final prompt against n_ctx,
also for a small context where the budget has to cut.

    .venv/bin/python benchmarks/bench_answer.py [--rounds 3] [--tokens 128] [-k 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from langchain_core.documents import Document

from rag.answer import Answer, Assistant
from rag.chains import format_docs
from rag.embed import load_embeddings
from rag.indexing import ingest
from rag.settings import Settings

DATA = Path(__file__).resolve().parent.parent / "data"
QUESTION = "Describe Kestrel Point Lighthouse: when it was first lit, who kept it, and how its light works today."


def timed(stream: Callable[[], Iterable[str | Answer]]) -> tuple[float, float, str, Answer | None]:
    """(seconds to first token, total seconds, text, final Answer if any)."""
    started = time.perf_counter()
    first = None
    pieces: list[str] = []
    final = None
    for item in stream():
        if isinstance(item, Answer):
            final = item
            continue
        if first is None and item:
            first = time.perf_counter()
        pieces.append(item)
    finished = time.perf_counter()
    return (first or finished) - started, finished - started, "".join(pieces), final


def final_prompt(assistant: Assistant, answer: Answer) -> str:
    docs = [Document(page_content=source.chunk, metadata={"title": source.title, "source": source.source}) for source in answer.sources]
    return assistant.qa_prompt.format(context=format_docs(docs), question=answer.question)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128, help="answer budget (max_tokens)")
    parser.add_argument("-k", type=int, default=4, help="chunks retrieved")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="llama.cpp threads [default: 1: on a busy shared machine two threads spin-wait on each other and timings swing several-fold]",
    )
    args = parser.parse_args()

    threads = args.threads or os.cpu_count() or 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-answer-"))
    settings = Settings(data_dir=workdir, temperature=0.0, max_tokens=args.tokens, n_threads=threads, k=args.k)
    embeddings = load_embeddings(settings)
    ingest([str(DATA)], settings, embeddings)

    assistant = Assistant(settings, embeddings=embeddings)
    assistant.check_ready()  # loads the LLM and opens the store, as `rag ask` does before answering
    local = assistant.local_llm
    *_, warm = assistant.stream(QUESTION)  # warm-up: first embedding call, page cache
    prompt = final_prompt(assistant, warm)

    lc = local.llm
    # The same llama_cpp.Llama the backend wraps: one set of weights and threads, so the
    # comparison measures what LangChain and the rag path add, not a second model's setup.
    raw = lc.client

    def ours() -> Iterable[str | Answer]:
        lc.client.reset()
        return assistant.stream(QUESTION)

    def raw_stream() -> Iterable[str]:
        raw.reset()
        for part in raw(
            prompt,
            max_tokens=args.tokens,
            temperature=lc.temperature,
            top_p=lc.top_p,
            top_k=lc.top_k,
            repeat_penalty=lc.repeat_penalty,
            stop=lc.stop,
            stream=True,
        ):
            yield part["choices"][0]["text"]

    def count(text: str) -> int:
        return len(raw.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    runs: dict[str, list[tuple[float, float, str, Answer | None]]] = {"rag ask path": [], "raw llama-cpp-python": []}
    paths = {"rag ask path": ours, "raw llama-cpp-python": raw_stream}
    for round_number in range(args.rounds):
        order = list(paths) if round_number % 2 == 0 else list(reversed(paths))  # neither path always goes first
        for name in order:
            runs[name].append(timed(paths[name]))
            if os.environ.get("BENCH_VERBOSE"):
                first, total, text, _ = runs[name][-1]
                print(f"  {name}: first {first:.2f} s, total {total:.2f} s, {count(text)} tokens")

    rows = {}
    for name, results in runs.items():
        rows[name] = (
            statistics.median(run[0] for run in results),
            statistics.median(run[1] for run in results),
            statistics.median(count(text) for _, _, text, _ in results),
            statistics.median((count(text) - 1) / max(total - first, 1e-9) for first, total, text, _ in results),
        )
    rates = {name: row[3] for name, row in rows.items()}
    print(f"SmolLM2-135M Q4_1 via llama.cpp, threads={threads}, k={args.k}, max_tokens={args.tokens}, median of {args.rounds} interleaved rounds")
    print(f"{'path':<24}{'first token s':>14}{'total s':>9}{'tokens':>8}{'gen tok/s':>11}{'vs raw':>8}")
    for name, (first, total, tokens, rate) in rows.items():
        print(f"{name:<24}{first:>14.3f}{total:>9.3f}{tokens:>8.0f}{rate:>11.1f}{rate / rates['raw llama-cpp-python']:>8.2f}")
    ratio = rates["rag ask path"] / rates["raw llama-cpp-python"]
    same = runs["rag ask path"][-1][2].strip() == runs["raw llama-cpp-python"][-1][2].strip()
    print(f"generation speed, rag ask / raw: {ratio:.3f} (target >= 0.95); same answer text: {'yes' if same else 'no'}")

    budget = warm.metadata["budget"]
    print(
        f"final prompt: {budget['prompt_tokens']} tokens of n_ctx {budget['n_ctx']} "
        f"({budget['prompt_tokens'] / budget['n_ctx']:.0%}; limit {budget['limit']} = n_ctx - {budget['answer_tokens']} for the answer), "
        f"{budget['kept']} chunks kept, {len(budget['trimmed'])} trimmed, {len(budget['dropped'])} dropped"
    )

    small = settings.with_overrides(n_ctx=512, max_tokens=64, k=8)
    squeezed = Assistant(small, embeddings=embeddings)
    answer = squeezed.ask(QUESTION)
    budget = answer.metadata["budget"]
    print(
        f"small context (n_ctx 512, max_tokens 64, k 8): prompt {budget['prompt_tokens']} tokens <= limit {budget['limit']}; "
        f"{budget['kept']} chunks kept, {len(budget['trimmed'])} trimmed, {len(budget['dropped'])} dropped"
    )


if __name__ == "__main__":
    main()
