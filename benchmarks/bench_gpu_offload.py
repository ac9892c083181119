"""GPU offload through rag's llama.cpp backend: prompt and generation tokens/s at n_gpu_layers=0 and -1.

Prompt processing and generation are reported apart, from llama.cpp's own counters
(``llama_perf_context``: tokens evaluated and the time spent on each phase), so the
speeds count only tokens the model evaluated: no BOS added by a tokenizer, no prompt
time inside the generation rate. Each figure is the median of ``--rounds`` runs, each
from an empty KV cache. Needs a llama-cpp-python build with GPU offload (e.g.
``CMAKE_ARGS="-DGGML_CUDA=on"``); on a CPU-only build it says so and exits 0.

    python benchmarks/bench_gpu_offload.py [MODEL.gguf] [--tokens 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from pathlib import Path

from rag.llm import load_local_llm
from rag.settings import Settings

DATA = Path(__file__).resolve().parent.parent / "data"


def long_prompt() -> str:
    """A ChatML prompt of several hundred tokens (the sample documents), so prompt speed means something."""
    documents = "\n\n".join(path.read_text(encoding="utf-8") for path in sorted(DATA.glob("*.*")) if path.suffix in {".md", ".rst", ".txt"})
    return (
        f"<|im_start|>user\nRead these documents, then write a long story about the lighthouse keeper.\n\n{documents[:3000]}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@dataclass
class Phases:
    prompt_tokens: int
    prompt_s: float
    generated_tokens: int
    generation_s: float

    @property
    def prompt_rate(self) -> float:
        return self.prompt_tokens / max(self.prompt_s, 1e-9)

    @property
    def generation_rate(self) -> float:
        return self.generated_tokens / max(self.generation_s, 1e-9)


def run_once(local, prompt: str) -> Phases:
    """One completion from an empty KV cache; the phases as llama.cpp counted them."""
    import llama_cpp

    client = local.llm.client  # the llama_cpp.Llama the backend wraps
    client.reset()  # forget the cached prompt: evaluate it all again
    llama_cpp.llama_perf_context_reset(client._ctx.ctx)
    local.llm.invoke(prompt)
    perf = llama_cpp.llama_perf_context(client._ctx.ctx)
    return Phases(perf.n_p_eval, perf.t_p_eval_ms / 1000, perf.n_eval, perf.t_eval_ms / 1000)


def measure(settings: Settings, prompt: str, rounds: int) -> list[Phases]:
    local = load_local_llm(settings)
    local.llm.invoke(prompt, max_tokens=8)  # warm-up: first-call allocations, GPU kernels
    return [run_once(local, prompt) for _ in range(rounds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="GGUF path [default: SmolLM2-135M]")
    parser.add_argument("--tokens", type=int, default=256, help="generation budget (max_tokens)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        print("this llama-cpp-python build has no GPU offload compiled in: nothing to compare")
        return
    prompt = long_prompt()
    base = Settings(llm_model=args.model, max_tokens=args.tokens, temperature=0.0, stop=[])
    results = {layers: measure(base.with_overrides(n_gpu_layers=layers), prompt, args.rounds) for layers in (0, -1)}

    print(f"median of {args.rounds} runs, each from an empty KV cache; tokens as llama.cpp evaluated them")
    print(f"{'n_gpu_layers':>12}{'prompt tok':>12}{'prompt tok/s':>14}{'gen tok':>9}{'gen tok/s':>11}")
    medians = {}
    for layers, runs in results.items():
        prompt_rate = statistics.median(run.prompt_rate for run in runs)
        generation_rate = statistics.median(run.generation_rate for run in runs)
        medians[layers] = (prompt_rate, generation_rate)
        prompt_tokens = statistics.median(run.prompt_tokens for run in runs)
        generated = statistics.median(run.generated_tokens for run in runs)
        print(f"{layers:>12}{prompt_tokens:>12.0f}{prompt_rate:>14.1f}{generated:>9.0f}{generation_rate:>11.1f}")
    (cpu_prompt, cpu_gen), (gpu_prompt, gpu_gen) = medians[0], medians[-1]
    print(f"gpu/cpu: prompt {gpu_prompt / cpu_prompt:.2f}x, generation {gpu_gen / cpu_gen:.2f}x")


if __name__ == "__main__":
    main()
