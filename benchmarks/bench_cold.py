"""Cold start: what a user waits for from a fresh process, beside the floor doing the same work.

Each round runs these as fresh processes, in a rotating order (the machine is shared and noisy):

- ``rag ask --json QUESTION --store S`` beside the floor: a plain llama-cpp-python script
  that loads the same GGUF with the same settings, evaluates the same final prompt (the exact
  text rag sent, captured by the instrumented run of :mod:`bench_answer`) and generates with
  the same sampling and token budget (same answer text, so the same number of tokens);
- ``rag models`` and ``rag doctor``, beside ``python -c pass`` (the interpreter alone);
- a no-op re-run of a finished ``rag batch-summarize`` job (0 LLM calls), beside the same.

Prints the median wall time of each, its ratio to its floor, and the issue's target. With
``--baseline SRC`` (a checkout of another version's source tree, e.g. from ``git archive``)
the same rag commands also run from that tree (``PYTHONPATH=SRC``) in the same rounds, and
each is printed as a before/after ratio.
The GGUF metadata cache (``gguf-metadata.json`` in the cache folder) is warm after the
first run, as it is for a user; the instrumented run shows the header walk it saves.

    .venv/bin/python benchmarks/bench_cold.py [--rounds 3] [--tokens 128] [--threads 1] [--baseline SRC] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_answer import DATA, FLOOR_SCRIPT, QUESTION, ingested_store, median, rag_command, run_json  # noqa: E402

BENCH_ANSWER = Path(__file__).resolve().parent / "bench_answer.py"
TARGETS = {"rag ask --json": 1.5, "rag models": 1.0, "batch re-run (no-op)": 1.5}  # ratio to the floor; seconds; seconds


def run_wall(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds of a command that must succeed (its output is not needed)."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are over these")
    parser.add_argument("--tokens", type=int, default=128, help="answer budget (max_tokens)")
    parser.add_argument("-k", type=int, default=4, help="chunks retrieved")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1: steadier on a busy shared machine)")
    parser.add_argument("--baseline", type=Path, help="another version's source tree: run its rag beside this one's")
    parser.add_argument("--json", dest="json_out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    store, env = ingested_store(workdir, args.tokens, args.threads, args.k)
    rag = rag_command()

    # The final prompt rag sends, for the floor; also warms the page cache and the metadata cache.
    _, warm = run_json([sys.executable, str(BENCH_ANSWER), "--instrumented", store, QUESTION], env)
    spec = workdir / "floor.json"
    spec.write_text(json.dumps({"prompt": warm["prompt"], "model": warm["model"], "sampling": warm["sampling"]}), encoding="utf-8")
    batch_env = {**env, "RAG_MAX_TOKENS": "32"}
    batch = [*rag, "batch-summarize", str(DATA), "--out", str(workdir / "batch"), "--json"]
    run_json(batch, batch_env)  # the finished job that the timed runs re-run

    base_env = {**env, "PYTHONPATH": str(args.baseline.resolve())} if args.baseline else None
    base_batch = [*rag, "batch-summarize", str(DATA), "--out", str(workdir / "batch-baseline"), "--json"]
    if base_env:
        run_json(base_batch, {**base_env, "RAG_MAX_TOKENS": "32"})
    baseline: dict[str, list[float]] = {"rag ask --json": [], "rag models": [], "rag doctor": [], "batch re-run (no-op)": []}
    ask_runs: list[tuple[float, dict]] = []
    floor_runs: list[tuple[float, dict]] = []
    walls: dict[str, list[float]] = {"rag models": [], "rag doctor": [], "batch re-run (no-op)": [], "python -c pass": []}
    rerun_calls = []
    steps = ["ask", "floor", "models", "doctor", "batch", "python"] + (["baseline"] if base_env else [])
    for round_number in range(args.rounds):
        order = steps[round_number % len(steps) :] + steps[: round_number % len(steps)]
        for step in order:
            if step == "ask":
                ask_runs.append(run_json([*rag, "ask", "--json", QUESTION, "--store", store], env))
            elif step == "floor":
                floor_runs.append(run_json([sys.executable, "-c", FLOOR_SCRIPT, str(spec)], env))
            elif step == "models":
                walls["rag models"].append(run_wall([*rag, "models"], env))
            elif step == "doctor":
                walls["rag doctor"].append(run_wall([*rag, "doctor"], env))
            elif step == "batch":
                wall, report = run_json(batch, batch_env)
                walls["batch re-run (no-op)"].append(wall)
                rerun_calls.append(report["llm_calls"])
            elif step == "python":
                walls["python -c pass"].append(run_wall([sys.executable, "-c", "pass"], env))
            else:
                baseline["rag ask --json"].append(run_wall([*rag, "ask", "--json", QUESTION, "--store", store], base_env))
                baseline["rag models"].append(run_wall([*rag, "models"], base_env))
                baseline["rag doctor"].append(run_wall([*rag, "doctor"], base_env))
                baseline["batch re-run (no-op)"].append(run_wall(base_batch, {**base_env, "RAG_MAX_TOKENS": "32"}))

    ask = median(wall for wall, _ in ask_runs)
    floor = median(wall for wall, _ in floor_runs)
    interpreter = median(walls["python -c pass"])
    answers = {data["answer"].strip() for _, data in ask_runs} | {data["answer"].strip() for _, data in floor_runs}
    generated = median(data["llama"]["generated"] for _, data in floor_runs)
    load = os.getloadavg()[0]
    print(
        f"{Path(warm['model']['path']).name} via llama.cpp, threads={args.threads}, k={args.k}, max_tokens={args.tokens}; "
        f"median of {args.rounds} interleaved rounds, each a fresh process; load average {load:.2f}"
    )
    print(f"\n{'cold command':<26}{'wall s':>8}{'floor':>28}{'floor s':>9}{'ratio':>7}   target")
    print(f"{'rag ask --json':<26}{ask:>8.2f}{'llama-cpp-python script':>28}{floor:>9.2f}{ask / floor:>7.2f}   <= {TARGETS['rag ask --json']}x the floor")
    for name in ("rag models", "rag doctor", "batch re-run (no-op)"):
        wall = median(walls[name])
        target = f"<= {TARGETS[name]} s" if name in TARGETS else ""
        print(f"{name:<26}{wall:>8.2f}{'python -c pass':>28}{interpreter:>9.2f}{wall / interpreter:>7.2f}   {target}")
    print(
        f"same answer text in every ask and floor run: {'yes' if len(answers) == 1 else f'no ({len(answers)} different)'}; "
        f"floor generated {generated:.0f} tokens; LLM calls in the batch re-runs: {rerun_calls}"
    )
    if base_env:
        print(f"\n{'before/after (same rounds)':<26}{'before s':>9}{'after s':>9}{'speed-up':>10}   before = {args.baseline}")
        ours = {"rag ask --json": ask, **{name: median(walls[name]) for name in ("rag models", "rag doctor", "batch re-run (no-op)")}}
        for name, values in baseline.items():
            print(f"{name:<26}{median(values):>9.2f}{ours[name]:>9.2f}{median(values) / ours[name]:>9.2f}x")
        print(f"{'floor (llama-cpp-python)':<26}{'':>9}{floor:>9.2f}   before: ask / floor = {median(baseline['rag ask --json']) / floor:.2f}")
    parts = warm["parts"]
    before = sum(parts[name] for name in ("imports", "model load", "embedder load", "Chroma open", "chain setup", "chain start", "query embedding", "Chroma query", "context fitting"))
    print(
        "rag before the prompt is evaluated (instrumented warm-up run): "
        + ", ".join(f"{name} {parts[name]:.2f}" for name in ("imports", "model load", "embedder load", "Chroma open", "query embedding"))
        + f"; all {before:.2f} s"
    )
    for detail, seconds in warm["details"].items():
        print(f"  {detail}: {seconds:.3f} s (the gguf package's reader took 2.2-3.2 s for this file before)")
    if args.json_out:
        figures = {
            "ask_s": ask, "floor_s": floor, "ask_over_floor": ask / floor, "python_s": interpreter,
            **{f"{name}_s": median(values) for name, values in walls.items()}, "same_answer": len(answers) == 1,
            "batch_rerun_llm_calls": rerun_calls, "load_average": load,
            "baseline_s": {name: median(values) for name, values in baseline.items() if values},
        }  # fmt: skip
        args.json_out.write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
