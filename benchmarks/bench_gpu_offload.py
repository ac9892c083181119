"""GPU offload through rag's llama.cpp backend: generation tokens/s at n_gpu_layers=0 and -1.

Needs a llama-cpp-python build with GPU offload (e.g. ``CMAKE_ARGS="-DGGML_CUDA=on"``);
on a CPU-only build it says so and exits 0.

    python benchmarks/bench_gpu_offload.py [MODEL.gguf] [--tokens 256]
"""

from __future__ import annotations

import argparse
import time

from rag.llm import load_llm
from rag.settings import Settings

PROMPT = "<|im_start|>user\nWrite a long story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n"


def tokens_per_second(settings: Settings, rounds: int = 3) -> float:
    local = load_llm(settings)
    local.llm.invoke(PROMPT, max_tokens=8)  # warm up
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        text = local.llm.invoke(PROMPT)
        best = max(best, local.count_tokens(text) / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="GGUF path [default: SmolLM2-135M]")
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()

    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        print("this llama-cpp-python build has no GPU offload compiled in: nothing to compare")
        return
    base = Settings(llm_model=args.model, max_tokens=args.tokens, temperature=0.0, stop=[])
    cpu = tokens_per_second(base.with_overrides(n_gpu_layers=0))
    gpu = tokens_per_second(base.with_overrides(n_gpu_layers=-1))
    print(f"n_gpu_layers=0: {cpu:.1f} tok/s   n_gpu_layers=-1: {gpu:.1f} tok/s   ratio gpu/cpu: {gpu / cpu:.2f}")


if __name__ == "__main__":
    main()
