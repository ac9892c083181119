"""Cold answer latency: `rag ask` and `rag.Assistant` as a user runs them, beside the llama.cpp floor.

What a user waits for is a cold command: a new process that imports, loads both
models, opens the store, retrieves, evaluates the prompt and generates. Each round
runs these, each as a fresh process, in a rotating order (the machine is shared and
noisy):

- ``rag ask --json QUESTION --store S``: wall time of the command;
- ``python -c`` with ``rag.Assistant(...).ask(QUESTION)``: wall time of a script's first answer;
- the floor: a plain llama-cpp-python script that loads the same GGUF with the same
  settings and generates from the same final prompt (the exact text rag sent, captured
  in the instrumented run) with the same sampling settings and token budget;
- an instrumented run of the steps of ``Assistant.stream``, each timed with
  ``time.perf_counter``: imports, model load, embedder load, Chroma open, query
  embedding, Chroma query, context fitting, prompt evaluation, generation (prompt
  evaluation and generation also from llama.cpp's own counters).

Prints medians over the rounds: each command's wall time and its ratio to the floor,
time to first token with its parts beside the floor's, and the final prompt's tokens
against n_ctx (also for a small context, where the budget has to cut).

    .venv/bin/python benchmarks/bench_answer.py [--rounds 3] [--tokens 128] [-k 4] [--threads 1] [--json OUT]
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # the instrumented run counts its imports from here

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "data"
QUESTION = "Describe Kestrel Point Lighthouse: when it was first lit, who kept it, and how its light works today."

ASSISTANT_SCRIPT = """
import json, sys
import rag
answer = rag.Assistant(rag.Settings(store_dir=sys.argv[1])).ask(sys.argv[2])
print(json.dumps({"answer": answer.answer}))
"""

# What a user would write with llama-cpp-python alone, given the prompt and the settings.
# The timing and llama.cpp's counters are the only additions.
FLOOR_SCRIPT = """
import time
started = time.perf_counter()
import json, sys
import llama_cpp
from llama_cpp import Llama
imported = time.perf_counter()
spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
model = spec["model"]
llm = Llama(model["path"], n_ctx=model["n_ctx"], n_batch=model["n_batch"], n_threads=model["n_threads"],
            n_threads_batch=model["n_threads_batch"], n_gpu_layers=model["n_gpu_layers"], seed=model["seed"], verbose=False)
loaded = time.perf_counter()
llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
first, pieces = None, []
for part in llm(spec["prompt"], stream=True, **spec["sampling"]):
    first = first or time.perf_counter()
    pieces.append(part["choices"][0]["text"])
finished = time.perf_counter()
perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
print(json.dumps({
    "answer": "".join(pieces).strip(),
    "parts": {"imports": imported - started, "model load": loaded - imported, "prompt evaluation": first - loaded},
    "first_token": first - started, "generation": finished - first, "total": finished - started,
    "llama": {"prompt_tokens": perf.n_p_eval, "prompt_s": perf.t_p_eval_ms / 1000, "generated": perf.n_eval, "generation_s": perf.t_eval_ms / 1000},
}))
"""

# The parts of the time to first token, in the order they happen.
PARTS = [
    "imports",
    "model load",
    "embedder load",
    "Chroma open",
    "chain setup",
    "chain start",
    "query embedding",
    "Chroma query",
    "context fitting",
    "prompt evaluation",
]


def instrumented(store: str, question: str) -> dict:
    """The steps of ``Assistant.stream`` in this (fresh) process, each timed; the final prompt as sent."""
    import llama_cpp
    from langchain_core.callbacks import BaseCallbackHandler

    import rag.models
    from rag.answer import Assistant
    from rag.embed import load_embeddings
    from rag.settings import Settings

    marks = {"imports": time.perf_counter()}
    gguf_reads: list[float] = []  # rag reads GGUF headers (chat template, identity): rag.models walks them
    walk = rag.models._walk_gguf_header

    def timed_walk(data):
        began = time.perf_counter()
        try:
            return walk(data)
        finally:
            gguf_reads.append(time.perf_counter() - began)

    rag.models._walk_gguf_header = timed_walk
    settings = Settings(store_dir=store)
    local = Assistant(settings).local_llm
    marks["model load"] = time.perf_counter()
    embeddings = load_embeddings(settings)
    marks["embedder load"] = time.perf_counter()
    assistant = Assistant(settings, local_llm=local, embeddings=embeddings)
    assistant.check_ready()  # opens the store, as Assistant.stream does first
    marks["Chroma open"] = time.perf_counter()
    chain = assistant.retrieval_chain()  # the prompt template and the context budget
    marks["chain setup"] = time.perf_counter()

    embedding_s = []
    embed_query = embeddings.embed_query

    def timed_embed_query(text: str) -> list[float]:
        began = time.perf_counter()
        try:
            return embed_query(text)
        finally:
            embedding_s.append(time.perf_counter() - began)

    embeddings.embed_query = timed_embed_query

    class Timer(BaseCallbackHandler):
        def __init__(self) -> None:
            self.names: dict = {}
            self.retrieval = (0.0, 0.0)
            self.prompt = ""
            self.llm_start = self.first_token = 0.0

        def on_chain_start(self, serialized, inputs, *, run_id, **kwargs) -> None:
            self.names[run_id] = (kwargs.get("name"), time.perf_counter())

        def on_chain_end(self, outputs, *, run_id, **kwargs) -> None:
            name, began = self.names.pop(run_id, (None, 0.0))
            if name == "retriever":
                self.retrieval = (began, time.perf_counter())

        def on_llm_start(self, serialized, prompts, **kwargs) -> None:
            self.prompt, self.llm_start = prompts[0], time.perf_counter()

        def on_llm_new_token(self, token, **kwargs) -> None:
            self.first_token = self.first_token or time.perf_counter()

    timer = Timer()
    context = local.llm.client._ctx.ctx
    llama_cpp.llama_perf_context_reset(context)
    stream_start = time.perf_counter()
    answer = "".join(chunk.get("answer", "") for chunk in chain.stream(question, config={"callbacks": [timer]}))
    finished = time.perf_counter()
    perf = llama_cpp.llama_perf_context(context)

    parts, previous = {}, STARTED
    for name, moment in marks.items():
        parts[name], previous = moment - previous, moment
    # Streamed steps overlap in their callbacks; these three segments do not.
    retrieval_start, retrieval_end = timer.retrieval
    parts["chain start"] = retrieval_start - stream_start
    parts["query embedding"] = sum(embedding_s)
    parts["Chroma query"] = retrieval_end - retrieval_start - parts["query embedding"]
    parts["context fitting"] = timer.llm_start - retrieval_end  # token counting, prompt rendering
    parts["prompt evaluation"] = timer.first_token - timer.llm_start
    lc = local.llm
    details = {"GGUF header walks (rag.models: the embedder's fingerprint, metadata cache misses)": sum(gguf_reads)}
    return {
        "answer": answer.strip(),
        "parts": parts,
        "details": details,
        "first_token": timer.first_token - STARTED,
        "generation": finished - timer.first_token,
        "total": finished - STARTED,
        "llama": {"prompt_tokens": perf.n_p_eval, "prompt_s": perf.t_p_eval_ms / 1000, "generated": perf.n_eval, "generation_s": perf.t_eval_ms / 1000},
        "prompt": timer.prompt,
        "model": {
            "path": lc.model_path,
            "n_ctx": lc.n_ctx,
            "n_batch": lc.n_batch,
            "n_threads": lc.n_threads,
            "n_threads_batch": lc.model_kwargs.get("n_threads_batch", lc.n_threads),
            "n_gpu_layers": lc.n_gpu_layers or 0,
            "seed": lc.seed,
        },
        "sampling": {
            "max_tokens": lc.max_tokens,
            "temperature": lc.temperature,
            "top_p": lc.top_p,
            "top_k": lc.top_k,
            "repeat_penalty": lc.repeat_penalty,
            "stop": lc.stop,
        },
    }


def run_json(command: list[str], env: dict[str, str]) -> tuple[float, dict]:
    """(wall seconds, the JSON the process printed)."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall, json.loads(done.stdout)


def ingested_store(workdir: Path, tokens: int, threads: int, k: int) -> tuple[str, dict]:
    """A store of data/ under ``workdir`` and the environment every timed process runs with (no RAG_* of the caller's)."""
    store = str(workdir / "store")
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAG_") or name == "RAG_CACHE_DIR"}
    env.update(RAG_DATA_DIR=str(workdir / "data"), RAG_TEMPERATURE="0", RAG_MAX_TOKENS=str(tokens), RAG_N_THREADS=str(threads), RAG_K=str(k))
    run_json([*rag_command(), "ingest", str(DATA), "--store", store, "--json"], env)
    return store, env


def rag_command() -> list[str]:
    script = Path(sys.executable).parent / "rag"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rag"]


def median(values) -> float:
    return statistics.median(list(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are over these")
    parser.add_argument("--tokens", type=int, default=128, help="answer budget (max_tokens)")
    parser.add_argument("-k", type=int, default=4, help="chunks retrieved")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="llama.cpp threads [default: 1: on a busy shared machine two threads spin-wait on each other and timings swing several-fold]",
    )
    parser.add_argument("--json", dest="json_out", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--instrumented", nargs=2, metavar=("STORE", "QUESTION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.instrumented:
        print(json.dumps(instrumented(*args.instrumented)))
        return

    workdir = Path(tempfile.mkdtemp(prefix="bench-answer-"))
    store, env = ingested_store(workdir, args.tokens, args.threads, args.k)
    rag = rag_command()

    instrumented_command = [sys.executable, __file__, "--instrumented", store, QUESTION]
    _, warm = run_json(instrumented_command, env)  # warm-up (page cache), and the final prompt for the floor
    spec = workdir / "floor.json"
    spec.write_text(json.dumps({"prompt": warm["prompt"], "model": warm["model"], "sampling": warm["sampling"]}), encoding="utf-8")

    paths = {
        "rag ask --json": [*rag, "ask", "--json", QUESTION, "--store", store],
        "rag.Assistant().ask": [sys.executable, "-c", ASSISTANT_SCRIPT, store, QUESTION],
        "floor (llama-cpp-python)": [sys.executable, "-c", FLOOR_SCRIPT, str(spec)],
        "instrumented rag": instrumented_command,
    }
    runs: dict[str, list[tuple[float, dict]]] = {name: [] for name in paths}
    names = list(paths)
    for round_number in range(args.rounds):
        order = names[round_number % len(names) :] + names[: round_number % len(names)]  # no path always goes first
        for name in order:
            runs[name].append(run_json(paths[name], env))
            if os.environ.get("BENCH_VERBOSE"):
                print(f"  round {round_number + 1}: {name}: {runs[name][-1][0]:.2f} s", file=sys.stderr)

    wall = {name: median(seconds for seconds, _ in results) for name, results in runs.items()}
    floor = wall["floor (llama-cpp-python)"]
    ours, base = [data for _, data in runs["instrumented rag"]], [data for _, data in runs["floor (llama-cpp-python)"]]
    answers = {data["answer"] for results in runs.values() for _, data in results}
    generated = (median(d["llama"]["generated"] for d in ours), median(d["llama"]["generated"] for d in base))
    ask_data = runs["rag ask --json"][-1][1]

    print(
        f"{Path(warm['model']['path']).name} via llama.cpp, threads={args.threads}, k={args.k}, max_tokens={args.tokens}, "
        f"median of {args.rounds} interleaved rounds, each run a fresh process"
    )
    print(f"\n{'cold run':<28}{'wall s':>8}{'vs floor':>10}")
    for name in paths:
        print(f"{name:<28}{wall[name]:>8.2f}{wall[name] / floor:>10.2f}")
    print(f"same answer text in every run: {'yes' if len(answers) == 1 else f'no ({len(answers)} different)'}; "
          f"generated tokens rag {generated[0]:.0f}, floor {generated[1]:.0f}")  # fmt: skip

    print(f"\n{'time to first token, parts':<28}{'rag s':>8}{'floor s':>9}")
    for part in PARTS:
        mine = median(d["parts"][part] for d in ours)
        theirs = median(d["parts"][part] for d in base) if part in base[0]["parts"] else None
        print(f"{part:<28}{mine:>8.3f}{'' if theirs is None else f'{theirs:.3f}':>9}")
    first = (median(d["first_token"] for d in ours), median(d["first_token"] for d in base))
    generation = (median(d["generation"] for d in ours), median(d["generation"] for d in base))
    total = (median(d["total"] for d in ours), median(d["total"] for d in base))
    print(f"{'= time to first token':<28}{first[0]:>8.3f}{first[1]:>9.3f}   rag / floor {first[0] / first[1]:.2f}")
    print(f"{'generation':<28}{generation[0]:>8.3f}{generation[1]:>9.3f}")
    print(f"{'= total in the process':<28}{total[0]:>8.3f}{total[1]:>9.3f}   rag / floor {total[0] / total[1]:.2f}")
    outside = [median(wall - data["total"] for wall, data in runs[name]) for name in ("instrumented rag", "floor (llama-cpp-python)")]
    print(f"{'process start and exit':<28}{outside[0]:>8.3f}{outside[1]:>9.3f}   (wall time minus the total in the process)")
    for detail in ours[0]["details"]:
        print(f"  of which {detail}: {median(d['details'][detail] for d in ours):.3f} s")
    print("(each part is a median on its own; the parts before prompt evaluation are what rag adds to the floor)")
    for label, data in (("rag", ours), ("floor", base)):
        prompt_rate = median(d["llama"]["prompt_tokens"] / max(d["llama"]["prompt_s"], 1e-9) for d in data)
        gen_rate = median(d["llama"]["generated"] / max(d["llama"]["generation_s"], 1e-9) for d in data)
        print(f"llama.cpp counters, {label:<5}: prompt {median(d['llama']['prompt_tokens'] for d in data):.0f} tokens at {prompt_rate:.0f} tok/s, "
              f"generation {median(d['llama']['generated'] for d in data):.0f} tokens at {gen_rate:.1f} tok/s")  # fmt: skip

    budget = ask_data["metadata"]["budget"]
    print(
        f"\nfinal prompt: {budget['prompt_tokens']} tokens of n_ctx {budget['n_ctx']} "
        f"({budget['prompt_tokens'] / budget['n_ctx']:.0%}; limit {budget['limit']} = n_ctx - {budget['answer_tokens']} for the answer), "
        f"{budget['kept']} chunks kept, {len(budget['trimmed'])} trimmed, {len(budget['dropped'])} dropped"
    )
    small_env = {**env, "RAG_N_CTX": "512", "RAG_MAX_TOKENS": "64", "RAG_K": "8"}
    _, small = run_json([*rag, "ask", "--json", QUESTION, "--store", store], small_env)
    budget = small["metadata"]["budget"]
    print(
        f"small context (n_ctx 512, max_tokens 64, k 8): prompt {budget['prompt_tokens']} tokens <= limit {budget['limit']}; "
        f"{budget['kept']} chunks kept, {len(budget['trimmed'])} trimmed, {len(budget['dropped'])} dropped"
    )
    if args.json_out:
        figures = {"wall_s": wall, "first_token_s": dict(zip(("rag", "floor"), first)), "total_in_process_s": dict(zip(("rag", "floor"), total)),
                   "parts_s": {part: median(d["parts"][part] for d in ours) for part in PARTS}, "same_answer": len(answers) == 1}  # fmt: skip
        args.json_out.write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
