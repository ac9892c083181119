"""Batch summarization throughput, job overhead and re-run cost.

Writes a corpus of short documents plus a few longer than the context (so they are
map-reduced), then runs ``summarize_batch`` on it with 1 worker and with 2 workers
(fresh output folders), and re-runs the finished 1-worker job, in this process and
as a ``rag batch-summarize`` command. Prints documents/minute, the share of the
wall time spent inside LLM calls at 1 worker (target >= 0.9: the job machinery
adds little to the generation it drives), and the re-run time and LLM calls (0).

    .venv/bin/python benchmarks/bench_batch.py [--docs 20] [--long 4] [--n-ctx 1024] [--max-tokens 48]
    .venv/bin/python benchmarks/bench_batch.py --servers   # llamafile backend over 1, then 2 llama-servers
    .venv/bin/python benchmarks/bench_batch.py --ray       # also the Ray executor at 1 and 2 workers, same run

With ``--ray`` a local Ray instance (loopback, no dashboard) is started once before the
Ray rows, as a running cluster would be; its start-up time is printed apart. It prints
Ray/local throughput at equal workers (target >= 0.9) and, from the per-document time,
an estimate for N nodes (the driver loads documents in one thread: that caps it).

The machine is shared and noisy: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from rag.batch import BatchReport, summarize_batch
from rag.models import default_llm_path
from rag.settings import Settings

PLACES = ["Kestrel Point", "Lake Varen", "Marlow Street", "Holm Ferry", "Tarn Ridge", "Orsby Quay", "Pellin Moor", "Castor Bay"]
THINGS = ["lighthouse", "solar boat race", "bakery", "ferry line", "weather station", "library", "tram depot", "seed bank"]
PEOPLE = ["Edith Marrow", "Jonas Brandt", "Ada Lindqvist", "Tomas Reyes", "Mira Okafor", "Lena Vogel", "Oskar Dahl", "Ruth Adeyemi"]
SENTENCES = [
    "The {thing} at {place} opened in {year} after {person} raised {money} thousand crowns from local families.",
    "Every {month}, about {count} visitors come to see the {thing}, most of them by the morning ferry.",
    "In {year2} a storm damaged the roof, and repairs took {weeks} weeks under the eye of {person}.",
    "The council measures its running costs at {money} thousand crowns a year, paid partly by ticket sales.",
    "{person} keeps a logbook of every event at the {thing}; the oldest volume dates from {year}.",
    "A survey in {year2} found that {percent} percent of residents had visited the {thing} at least once.",
    "Volunteers repaint the {thing} every {weeks} years, using paint mixed to the original {color} shade.",
    "The nearest town, {place}, sends two buses a day, and the last one leaves at {hour} in the evening.",
]
MONTHS = ["March", "April", "June", "August", "October", "December"]
COLORS = ["ochre", "slate blue", "brick red", "sea green", "white"]


def paragraph(rng: random.Random, place: str, thing: str, person: str, sentences: int) -> str:
    picks = rng.sample(SENTENCES, k=min(sentences, len(SENTENCES)))
    return " ".join(
        template.format(
            thing=thing, place=place, person=person, year=rng.randint(1850, 1990), year2=rng.randint(1991, 2024),
            money=rng.randint(12, 900), month=rng.choice(MONTHS), count=rng.randint(200, 9000), weeks=rng.randint(2, 30),
            percent=rng.randint(10, 95), color=rng.choice(COLORS), hour=rng.randint(6, 11),
        )  # fmt: skip
        for template in picks
    )


def write_corpus(folder: Path, short: int, long: int, seed: int = 7) -> list[Path]:
    """``short`` documents of 2-3 paragraphs and ``long`` ones of 14 (well over a 1024-token context)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(short + long):
        place, thing, person = rng.choice(PLACES), rng.choice(THINGS), rng.choice(PEOPLE)
        paragraphs = 14 if number >= short else rng.randint(2, 3)
        body = "\n\n".join(paragraph(rng, place, thing, person, rng.randint(3, 5)) for _ in range(paragraphs))
        path = folder / f"{number:02d}-{thing.replace(' ', '-')}.md"
        path.write_text(f"# The {thing} at {place}\n\n{body}\n", encoding="utf-8")
        paths.append(path)
    return paths


def run(label: str, folder: Path, out: Path, settings: Settings, **options) -> tuple[str, BatchReport]:
    report = summarize_batch([folder], out, settings, **options)
    if report.status != "done":
        raise SystemExit(f"{label}: job ended {report.status}: {report.failures}")
    return label, report


def start_ray(cores: int) -> float:
    """Start a local Ray instance on loopback (no dashboard, no usage report); its start-up seconds."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = time.perf_counter()
    import ray

    ray.init(num_cpus=cores, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    return time.perf_counter() - started


def ray_figures(results: list[tuple[str, BatchReport]], ray_started: float) -> dict:
    """Print Ray/local throughput at equal workers and the N-node estimate; return the figures."""
    local_one, local_two, ray_one, ray_two = (report for _, report in results[:4])
    ratios = {workers: local.seconds / ray.seconds for workers, local, ray in ((1, local_one, ray_one), (2, local_two, ray_two))}
    print(f"Ray start-up (once per cluster, not in the rows): {ray_started:.1f} s")
    print(f"Ray / local throughput at equal workers: {ratios[1]:.2f}x at 1 worker, {ratios[2]:.2f}x at 2 workers (target >= 0.9)")
    per_doc = ray_two.seconds / max(len(ray_two.records), 1) * 2  # seconds one worker spends per document, in the 2-worker run
    load = sum(record["timing"].get("load_seconds", 0.0) for record in ray_two.records) / max(len(ray_two.records), 1)
    cap = 60 / load if load > 0 else float("inf")
    estimates = {nodes: min(nodes * 2 * 60 / per_doc, cap) for nodes in (1, 2, 4, 8, 16)}
    print(f"per document: {per_doc:.2f} s of one worker, {load * 1000:.1f} ms of loading in the driver (caps it at {cap:,.0f} docs/min)")
    print("estimate with 2 such workers per node: " + ", ".join(f"{nodes} nodes {rate:,.0f} docs/min" for nodes, rate in estimates.items()))
    return {"startup_seconds": round(ray_started, 2), "throughput_ratio": {str(k): round(v, 3) for k, v in ratios.items()},
            "per_document_seconds": round(per_doc, 3), "estimate_docs_per_minute": {str(k): round(v, 1) for k, v in estimates.items()}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20, help="documents that fit the context")
    parser.add_argument("--long", type=int, default=4, help="documents longer than the context")
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, help="threads per worker [default: cores / workers]")
    parser.add_argument("--servers", action="store_true", help="llamafile backend over llama-server instead of in-process llama.cpp")
    parser.add_argument("--ray", action="store_true", help="also run the Ray executor (local instance) at 1 and 2 workers")
    parser.add_argument("--json", dest="json_out", help="also write the figures to this JSON file")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    one_worker_threads = args.threads or cores
    two_worker_threads = args.threads or max(1, cores // 2)
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    folder = work / "corpus"
    paths = write_corpus(folder, args.docs, args.long)
    settings = Settings(data_dir=work / "data", n_ctx=args.n_ctx, max_tokens=args.max_tokens, temperature=0.0)
    results: list[tuple[str, BatchReport]] = []
    with ExitStack() as stack:
        if args.servers:
            from rag.server import LlamaServer

            servers = [stack.enter_context(LlamaServer(default_llm_path(), n_ctx=args.n_ctx, threads=two_worker_threads)) for _ in range(2)]
            one = settings.with_overrides(backend="llamafile")
            results.append(run("1 worker (1 server)", folder, work / "out-1", one, servers=[servers[0].url]))
            results.append(run("2 workers (2 servers)", folder, work / "out-2", one, servers=[server.url for server in servers]))
        else:
            results.append(run("1 worker (in-process)", folder, work / "out-1", settings.with_overrides(n_threads=one_worker_threads)))
            results.append(run("2 workers (processes)", folder, work / "out-2", settings.with_overrides(n_threads=two_worker_threads), workers=2))
        ray_started = 0.0
        if args.ray:
            ray_started = start_ray(cores)
            stack.callback(__import__("ray").shutdown)
            ray_settings = settings.with_overrides(executor="ray")
            servers_for = (lambda count: {"servers": [server.url for server in servers[:count]]}) if args.servers else (lambda count: {})
            ray_one = ray_settings.with_overrides(backend="llamafile") if args.servers else ray_settings.with_overrides(n_threads=one_worker_threads)
            ray_two = ray_settings.with_overrides(backend="llamafile") if args.servers else ray_settings.with_overrides(n_threads=two_worker_threads)
            results.append(run("1 worker (Ray)", folder, work / "out-ray-1", ray_one, **servers_for(1)))
            results.append(run("2 workers (Ray)", folder, work / "out-ray-2", ray_two, workers=2, **servers_for(2)))
        rerun_label, rerun = run("re-run of the finished job", folder, work / "out-1", settings.with_overrides(n_threads=one_worker_threads),
                                 servers=[servers[0].url] if args.servers else ())  # fmt: skip
        command = [sys.executable, "-m", "rag", "batch-summarize", str(folder), "--out", str(work / "out-1"), "--json"]
        if args.servers:
            command += ["--server", servers[0].url]
        env = {**os.environ, "RAG_DATA_DIR": str(work / "data"), "RAG_N_CTX": str(args.n_ctx), "RAG_MAX_TOKENS": str(args.max_tokens),
               "RAG_TEMPERATURE": "0", "RAG_N_THREADS": str(one_worker_threads)}  # fmt: skip
        started = time.perf_counter()
        cli = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        cli_seconds = time.perf_counter() - started
        cli_report = json.loads(cli.stdout)

    first = results[0][1]
    long_docs = sum(1 for record in first.records if record["method"] == "map_reduce")
    print(f"corpus: {len(paths)} documents ({long_docs} map-reduced at n_ctx={args.n_ctx}), max_tokens={args.max_tokens}, {cores} cores, "
          f"threads per worker {one_worker_threads} (1 worker) / {two_worker_threads} (2 workers), load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'run':<28} {'wall s':>8} {'docs/min':>9} {'LLM s':>8} {'LLM/wall':>9} {'calls':>6} {'gen tok':>8}")
    figures = {}
    for label, report in [*results, (rerun_label, rerun)]:
        per_minute = len(report.records) / max(report.seconds, 1e-3) * 60
        ratio = report.llm_seconds / report.seconds
        print(f"{label:<28} {report.seconds:>8.2f} {per_minute:>9.1f} {report.llm_seconds:>8.1f} {ratio:>9.3f} {report.llm_calls:>6} {report.completion_tokens:>8}")
        figures[label] = {"seconds": report.seconds, "docs_per_minute": round(per_minute, 2), "llm_seconds": report.llm_seconds,
                          "llm_share": round(ratio, 4), "llm_calls": report.llm_calls, "completion_tokens": report.completion_tokens}  # fmt: skip
    print(f"{'re-run as a command':<28} {cli_seconds:>8.2f} {'':>9} {cli_report['llm_seconds']:>8.1f} {'':>9} {cli_report['llm_calls']:>6}"
          f"   (process start and imports included; {cli_report['reused']} reused)")  # fmt: skip
    speedup = results[1][1].seconds and results[0][1].seconds / results[1][1].seconds
    print(f"2 workers / 1 worker throughput: {speedup:.2f}x; generation share of wall time at 1 worker: {first.llm_seconds / first.seconds:.3f} (target >= 0.9)")
    if args.ray:
        figures["ray"] = ray_figures(results, ray_started)
    if args.json_out:
        figures["cli_rerun_seconds"] = round(cli_seconds, 3)
        Path(args.json_out).write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
