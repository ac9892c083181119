"""Streaming through `rag serve` beside the same question in-process through `rag.Assistant`.

A user of the API waits for the first token and then reads tokens as they come; the floor
is the library doing the same work in the caller's process (``Assistant.chat().stream``,
the chain the server runs for a conversation's first question). Both load the same models
with the same settings; each round asks both the same question (rotating over several, so
neither side reuses the previous prompt's KV cache more than the other), one after the
other, never at once (the machine is shared and noisy).

Measured per run: time to first token (request sent / call made -> first answer token),
tokens/s after the first (answer tokens / time from first to last token), and the whole
answer. The API side parses the server-sent events with ``requests`` (no SDK overhead).
Prints medians, API / in-process ratios (target: >= 0.95x tokens/s, <= 0.1 s added to
the time to first token) and whether both gave the same answers.

    .venv/bin/python benchmarks/bench_serve.py [--rounds 5] [--tokens 96] [--threads N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
QUESTIONS = [
    "When was Kestrel Point Lighthouse first lit?",
    "What is QuokkaDB and which license does it use?",
    "Who won the Lake Varen Solar Boat Race?",
    "What does the Marlow Street Bakery sell?",
]


def api_run(url: str, question: str, tokens: int) -> dict:
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": tokens, "temperature": 0, "stream": True}
    started = time.perf_counter()
    stamps, parts = [], []
    with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            delta = chunk["choices"][0]["delta"] if chunk.get("choices") else {}
            if delta.get("content"):
                stamps.append(time.perf_counter())
                parts.append(delta["content"])
    return measure(started, stamps, "".join(parts))


def library_run(assistant, question: str) -> dict:
    started = time.perf_counter()
    stamps, parts = [], []
    for item in assistant.chat().stream(question):
        if isinstance(item, str) and item:
            stamps.append(time.perf_counter())
            parts.append(item)
    return measure(started, stamps, "".join(parts))


def measure(started: float, stamps: list[float], text: str) -> dict:
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0
    return {"ttft": stamps[0] - started if stamps else float("nan"), "tokens": len(stamps), "tokens_per_s": rate, "answer": text.strip()}


def start_server(data_dir: Path, port: int, tokens: int, threads: int | None) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAG_")}
    env.update(RAG_DATA_DIR=str(data_dir), RAG_TEMPERATURE="0", RAG_MAX_TOKENS=str(tokens))
    if threads:
        env["RAG_N_THREADS"] = str(threads)
    process = subprocess.Popen([sys.executable, "-m", "rag", "serve", "--port", str(port)], cwd=ROOT, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"rag serve exited: {process.stderr.read().decode(errors='replace')}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("rag serve did not become ready in 180 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=96, help="answer budget (max_tokens) on both sides")
    parser.add_argument("--threads", type=int, help="llama.cpp threads on both sides [default: all cores]")
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    args = parser.parse_args()

    from rag.answer import Assistant
    from rag.indexing import ingest
    from rag.server import free_port
    from rag.settings import Settings

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        settings = Settings(data_dir=Path(folder), temperature=0.0, max_tokens=args.tokens, n_threads=args.threads)
        ingest([str(DATA)], settings)
        port = free_port()
        server = start_server(Path(folder), port, args.tokens, args.threads)
        url = f"http://127.0.0.1:{port}"
        try:
            assistant = Assistant(settings)
            api_run(url, QUESTIONS[-1], 8)  # warm-up: first-call costs on both sides
            library_run(assistant, QUESTIONS[-1])
            runs: dict[str, list[dict]] = {"api": [], "library": []}
            for number in range(args.rounds):
                question = QUESTIONS[number % len(QUESTIONS)]
                order = [("api", lambda: api_run(url, question, args.tokens)), ("library", lambda: library_run(assistant, question))]
                for name, run in order if number % 2 == 0 else order[::-1]:
                    runs[name].append(run())
                    print(f"  round {number + 1} {name}: ttft {runs[name][-1]['ttft']:.3f} s, {runs[name][-1]['tokens_per_s']:.1f} tokens/s", file=sys.stderr)
        finally:
            server.terminate()
            server.wait(10)

    med = {name: {key: statistics.median(run[key] for run in found) for key in ("ttft", "tokens_per_s", "tokens")} for name, found in runs.items()}
    same = sum(a["answer"] == b["answer"] for a, b in zip(runs["api"], runs["library"], strict=True))
    api, lib = med["api"], med["library"]
    print(f"\nstreaming, medians over {args.rounds} rounds (max_tokens {args.tokens}, temperature 0, threads {args.threads or 'all'})")
    print(f"{'':<22}{'API (rag serve)':>16}{'in-process':>12}{'ratio':>8}")
    print(f"{'time to first token':<22}{api['ttft']:>14.3f} s{lib['ttft']:>10.3f} s{api['ttft'] / lib['ttft']:>8.2f}   added {api['ttft'] - lib['ttft']:+.3f} s (target <= 0.1 s)")
    print(f"{'tokens/s':<22}{api['tokens_per_s']:>16.1f}{lib['tokens_per_s']:>12.1f}{api['tokens_per_s'] / lib['tokens_per_s']:>8.2f}   (target >= 0.95)")
    print(f"{'answer tokens':<22}{api['tokens']:>16.0f}{lib['tokens']:>12.0f}")
    print(f"same answer text: {same} of {args.rounds} rounds")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"medians": med, "runs": runs, "same_answers": same}, indent=2))


if __name__ == "__main__":
    main()
