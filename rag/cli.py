"""The ``rag`` command: a thin layer that parses flags into Settings, calls the library and prints its results.

Defaults shown in ``--help`` come from :class:`rag.settings.Settings` (the shared flags are in
:mod:`rag.cli_options`); each command calls one library function and prints the result's
``to_dict()`` or text.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from rag.cli_options import backend_options, comma_list, executor_options, folder_options, json_option, model_options, serve_options, setting_help, store_options
from rag.errors import EmptyQuestion, LLMBackendError, RagError
from rag.settings import Settings
from rag.signals import EXIT_INTERRUPTED, EXIT_TERMINATED, exit_status, run_ending_quickly, stop_on_sigterm

# Exit statuses (documented in the README).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3  # some sources/documents failed, the rest landed
EXIT_NOTHING_DONE = 4  # every source failed, nothing changed


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def handle_errors(command: Callable) -> Callable:
    """Turn expected errors into one line on stderr and a non-zero exit, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EmptyQuestion as error:  # a usage error the library finds before loading anything
            click.secho(f"error: {error}", fg="red", err=True)
            sys.exit(EXIT_USAGE)
        except RagError as error:
            click.secho(f"error: {error}", fg="red", err=True)
            sys.exit(EXIT_ERROR)
        except click.UsageError as error:  # found by the command itself: one line too, not click's usage block
            click.secho(f"error: {error.format_message()}", fg="red", err=True)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt as stopped:  # Ctrl-C (130), or SIGTERM (143): see rag.signals
            click.echo("interrupted", err=True)
            sys.exit(exit_status(stopped))

    return wrapper


def shown(text: str) -> str:
    """``text`` on one line: control characters and line breaks escaped (file names may hold them)."""
    from rag.sources import display_form

    return display_form(text)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.pass_context
@handle_errors
def cli(ctx: click.Context, verbose: int) -> None:
    """Ask questions of, and summarize, your own documents with local models only."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)], format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = Settings()  # a bad RAG_* variable or config file value is an InvalidSettings


def settings_from(ctx: click.Context, servers: tuple[str, ...] = (), **overrides: Any) -> Settings:
    """The group's Settings with this command's flags applied (``None``: flag not given)."""
    overrides["backend"] = implied_backend(overrides.get("backend"), overrides.get("llamafile_url") is not None or bool(servers))
    return ctx.obj.with_overrides(**overrides)


def implied_backend(backend: str | None, server_given: bool) -> str | None:
    """``--server`` means the llamafile backend; with another ``--backend`` it is a usage error."""
    if not server_given:
        return backend
    if backend not in (None, "llamafile"):
        raise click.UsageError(f"--server needs the llamafile backend, not --backend {backend}: drop --backend or --server")
    return "llamafile"


def output_folder(path: str | os.PathLike, what: str) -> Path:
    """The ``--out`` folder, created and checked before any work starts."""
    from rag.paths import ensure_directory

    return ensure_directory(path, what, "choose a folder you can write to for --out")


@cli.command()
@json_option
@click.pass_context
@handle_errors
def models(ctx: click.Context, as_json: bool) -> None:
    """List the models rag can use: role, file, size, origin, chat format."""
    from rag.models import list_models

    found = list_models(ctx.obj)
    if as_json:
        emit_json([model.to_dict() for model in found])
        return
    for model in found:
        status = f"  ! {model.error}" if model.error else ""
        click.echo(f"{model.role:<10} {model.name:<40} {model.size_bytes / 1e6:>7.1f} MB  {model.chat_format or '-':<8} {model.path}")
        click.echo(f"{'':<10} origin: {model.origin}{status}")


@cli.command()
@model_options
@store_options
@json_option
@click.pass_context
@handle_errors
def doctor(ctx: click.Context, as_json: bool, **options: Any) -> None:
    """Check offline readiness: models present and loadable, llama.cpp build, server, store files intact."""
    from rag.doctor import run_checks

    results = run_checks(settings_from(ctx, **options))
    if as_json:
        emit_json([check.to_dict() for check in results])
    else:
        for check in results:
            mark = click.style("ok  ", fg="green") if check.ok else click.style("FAIL", fg="red")
            click.echo(f"{mark} {check.name}: {check.detail}")
            if not check.ok and check.fix:
                click.echo(f"     fix: {check.fix}")
    if not all(check.ok for check in results if check.required):
        sys.exit(EXIT_ERROR)


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@store_options
@click.option("--chunk-size", type=int, help=setting_help("Characters per chunk", "chunk_size"))
@click.option("--chunk-overlap", type=int, help=setting_help("Characters shared by neighbouring chunks", "chunk_overlap"))
@click.option("--embed-tokens", type=int, help=setting_help("Tokens (words, punctuation) of each chunk the embedder sees (0: all)", "embed_tokens"))
@folder_options
@click.option("--allow-private-network", is_flag=True, default=None, help="Allow URLs on loopback and private networks.")
@click.option("--keep-boilerplate", is_flag=True, help="Keep web pages' navigation, headers and footers.")
@click.option("--source-timeout", type=float, metavar="SECONDS", help=setting_help("Time allowed to load one source", "source_timeout"))
@click.option("--max-source-mb", type=float, metavar="MB", help=setting_help("Largest file or web page read", "max_source_bytes", lambda size: size / 1e6))
@click.option("--prune", is_flag=True, help="Remove indexed sources no longer found under the folders given.")
@click.option("--reindex", is_flag=True, help="Drop the collection and rebuild it from INPUTS (to change embedder or splitter).")
@json_option
@click.pass_context
@handle_errors
def ingest(
    ctx: click.Context,
    inputs: tuple[str, ...],
    as_json: bool,
    prune: bool,
    reindex: bool,
    keep_boilerplate: bool,
    max_source_mb: float | None,
    **options: Any,
) -> None:
    """Index files, folders and URLs (http/https) into the store.

    Unchanged sources are skipped, changed ones replaced; a source that fails keeps
    what it had. Exit status: 0 all loaded, 3 some failed, 4 nothing could be done.
    """
    from rag.indexing import ingest as run_ingest

    settings = settings_from(
        ctx,
        strip_boilerplate=False if keep_boilerplate else None,
        max_source_bytes=int(max_source_mb * 1e6) if max_source_mb else None,
        **options,
    )
    progress = not as_json and sys.stderr.isatty()
    report = run_ingest(inputs, settings, prune=prune, reindex=reindex, progress=progress)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(
            f"sources: {report.sources_added} added, {report.sources_updated} updated, {report.sources_skipped} unchanged, "
            f"{report.sources_deleted} deleted, {len(report.failures)} failed"
        )
        click.echo(
            f"chunks:  {report.chunks_added} added, {report.chunks_updated} updated, {report.chunks_skipped} unchanged, "
            f"{report.chunks_deleted} deleted ({report.embedded} embedded) in {report.seconds:.1f} s"
            + (" [re-indexed]" if report.reindexed else "")
        )
        for failure in report.failures:
            click.secho(f"failed: {failure.display}", fg="yellow", err=True)
    if report.nothing_done:
        sys.exit(EXIT_NOTHING_DONE)
    if report.failures:
        sys.exit(EXIT_PARTIAL)


@cli.command()
@click.argument("query")
@click.option("-k", type=int, help=setting_help("Number of chunks", "k"))
@click.option("--retrieval", type=click.Choice(["vector", "lexical", "hybrid"]), help=setting_help("How chunks are found", "retrieval"))
@store_options
@json_option
@click.pass_context
@handle_errors
def search(ctx: click.Context, query: str, as_json: bool, k: int | None, **options: Any) -> None:
    """Show the chunks that best match QUERY, with rank, score, method, source, title and section."""
    from rag.indexing import hit_to_dict, search as run_search

    settings = settings_from(ctx, k=k, **options)
    hits = run_search(query, settings.k, settings)
    if as_json:
        emit_json([hit_to_dict(doc) for doc, _ in hits])
        return
    for rank, (doc, score) in enumerate(hits, start=1):
        page = f" p.{doc.metadata['page']}" if "page" in doc.metadata else ""
        section = f"  § {shown(doc.metadata['section'])}" if doc.metadata.get("section") else ""
        click.echo(f"[{rank}] {score:.3f} {doc.metadata.get('method', '')}  {shown(doc.metadata.get('title', ''))}{section}  ({shown(doc.metadata.get('source', ''))}{page})")
        click.echo("    " + " ".join(doc.page_content.split())[:240])


@cli.command()
@store_options
@json_option
@click.pass_context
@handle_errors
def sources(ctx: click.Context, as_json: bool, **options: Any) -> None:
    """List the indexed sources: chunks, when last ingested, title."""
    from rag.indexing import list_sources

    entries = list_sources(settings_from(ctx, **options))
    if as_json:
        emit_json([entry.to_dict() for entry in entries])
        return
    for entry in entries:
        state = "" if entry.state == "indexed" else "  [incomplete: ingest it again]"
        click.echo(f"{entry.chunks:>6}  {entry.ingested_at or '-':<25}  {shown(entry.source)}  ({shown(entry.title or '')}){state}")
    click.echo(f"{len(entries)} sources, {sum(entry.chunks for entry in entries)} chunks", err=True)


@cli.command()
@click.argument("items", nargs=-1, required=True, metavar="SOURCE...")
@store_options
@json_option
@click.pass_context
@handle_errors
def forget(ctx: click.Context, items: tuple[str, ...], as_json: bool, **options: Any) -> None:
    """Remove sources (a URL, a file, or every source under a folder) from the store."""
    from rag.indexing import forget as run_forget

    report = run_forget(items, settings_from(ctx, **options))
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(f"removed {report.sources_deleted} sources, {report.chunks_deleted} chunks")


def stream_to_terminal(items: Iterator[Any], show: bool) -> Any:
    """Echo the text pieces of a library stream as they come (a load failure on stderr); return its final result."""
    from rag.sources import LoadFailure

    result, printed = None, False
    try:
        for item in items:
            if isinstance(item, LoadFailure):
                click.echo(f"failed: {item.display}", err=True)
            elif not isinstance(item, str):
                result = item
            elif show and item:
                click.echo(item, nl=False)
                printed = True
    finally:
        if printed:  # end the line, so an error message starts on its own
            click.echo()
    return result


def echo_sources(sources: list) -> None:
    click.echo("\nSources:")
    for source in sources:
        score = "" if source.score is None else f" score {source.score:.3f}"
        part = "" if source.part is None else f" part {source.part}"
        click.echo(f"  [{source.number}] {shown(source.title)} ({shown(source.source)}){part}{score}")


@cli.command()
@click.argument("question")
@click.option("-k", type=int, help=setting_help("Number of chunks retrieved", "k"))
@model_options
@store_options
@click.option("--no-stream", is_flag=True, help="Print the answer only when it is complete.")
@json_option
@click.pass_context
@handle_errors
def ask(ctx: click.Context, question: str, as_json: bool, no_stream: bool, k: int | None, **options: Any) -> None:
    """Answer QUESTION from the indexed documents, then list its sources."""
    from rag.answer import Assistant

    assistant = Assistant(settings_from(ctx, k=k, **options))
    stream = not (no_stream or as_json)
    answer = stream_to_terminal(assistant.stream(question), show=stream)
    if as_json:
        emit_json(answer.to_dict(chunks=False))
        return
    if not stream:
        click.echo(answer.answer)
    echo_sources(answer.sources)
    budget = answer.metadata.get("budget") or {}
    if budget.get("trimmed") or budget.get("dropped"):
        click.echo(
            f"(to fit the {budget['n_ctx']}-token context: {len(budget['trimmed'])} chunk(s) trimmed, "
            f"{len(budget['dropped'])} dropped)",
            err=True,
        )


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@model_options
@folder_options
@click.option("--no-stream", is_flag=True, help="Print the summary only when it is complete.")
@json_option
@click.pass_context
@handle_errors
def summarize(ctx: click.Context, inputs: tuple[str, ...], as_json: bool, no_stream: bool, **options: Any) -> None:
    """Summarize files, folders and URLs: in one prompt when they fit the context, else map-reduce."""
    from rag.answer import Assistant

    stream = not (no_stream or as_json)
    summary = stream_to_terminal(Assistant(settings_from(ctx, **options)).stream_summary(inputs), show=stream)
    if as_json:
        emit_json(summary.to_dict(chunks=False))
    else:
        if not stream:
            click.echo(summary.summary)
        echo_sources(summary.sources)
        if summary.method == "map_reduce":
            click.echo(f"(map-reduce: {summary.metadata['groups']} parts, {summary.metadata['calls']} LLM calls)", err=True)
    if summary.failures:
        sys.exit(EXIT_PARTIAL)


@cli.command()
@click.option("-k", type=int, help=setting_help("Number of chunks retrieved per question", "k"))
@click.option("--history", "history_turns", type=int, help=setting_help("Exchanges remembered for follow-up questions", "history_turns"))
@model_options
@store_options
@click.pass_context
@handle_errors
def chat(ctx: click.Context, k: int | None, **options: Any) -> None:
    """Chat with your documents; follow-up questions use the conversation so far. `exit` or Ctrl-D leaves."""
    from rag.answer import Assistant

    session = Assistant(settings_from(ctx, k=k, **options)).chat()
    session.assistant.check_ready()
    click.echo("Ask about your documents; `exit` or Ctrl-D to leave.", err=True)
    while True:
        try:
            question = click.prompt("you", prompt_suffix="> ", default="", show_default=False).strip()
        except click.Abort:  # Ctrl-D or Ctrl-C at the prompt
            click.echo()
            return
        if question.lower() in {"exit", "quit"}:
            return
        if not question:
            continue
        try:
            answer = stream_to_terminal(session.stream(question), show=True)
        except LLMBackendError as error:  # the server may recover: report, keep the session
            click.secho(f"error: {error}", fg="red", err=True)
            continue
        echo_sources(answer.sources)


@cli.command("batch-summarize")
@click.argument("inputs", nargs=-1)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder; a re-run there redoes only what changed.")
@executor_options
@model_options(multiple_servers=True, prompt_help="Prompt family for the summaries (chatml, llama2, ...)")
@click.option("--max-words", type=click.IntRange(min=1), help="Ask for summaries of at most N words.")
@click.option("--from-store", is_flag=True, help="Summarize the sources indexed in the store (INPUTS, if any, narrow them).")
@store_options
@json_option
@click.pass_context
@handle_errors
def batch_summarize(
    ctx: click.Context,
    inputs: tuple[str, ...],
    out_dir: str,
    workers: int | None,
    servers: tuple[str, ...],
    max_words: int | None,
    from_store: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Summarize every document under INPUTS into --out, with citations and a corpus rollup; resumable."""
    from rag.batch import BatchInterrupted, summarize_batch

    if not inputs and not from_store:
        raise click.UsageError("give files, folders or URLs to summarize, or --from-store")
    settings = settings_from(ctx, servers, **options)
    output_folder(out_dir, "output folder")
    progress = not as_json and sys.stderr.isatty()
    try:
        report = summarize_batch(
            inputs, out_dir, settings, workers=workers, servers=servers, max_words=max_words, from_store=from_store, progress=progress
        )
        code = {"done": EXIT_OK, "partial": EXIT_PARTIAL}.get(report.status, EXIT_NOTHING_DONE)
    except BatchInterrupted as interrupted:
        report, code = interrupted.report, exit_status(interrupted)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(
            f"{report.done} of {report.documents} documents summarized ({report.summarized} this run, {report.reused} reused) "
            f"in {report.seconds:.1f} s: {report.files.get('report')}"
        )
        for failure in report.failures:
            click.echo(f"failed: {failure.display}", err=True)
        if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
            click.echo("interrupted: run the same command again to finish the rest", err=True)
    if code:
        sys.exit(code)


@cli.command()
@serve_options
@model_options
@store_options
@click.pass_context
@handle_errors
def serve(ctx: click.Context, k: int | None, **options: Any) -> None:
    """Serve an OpenAI-compatible API (/v1/chat/completions, /v1/models, /v1/embeddings, /v1/search) and a chat page at /."""
    from rag.serve import run_server

    settings = settings_from(ctx, k=k, **options)
    click.echo(f"rag serve: chat page and /v1 API on http://{settings.host}:{settings.port}/; Ctrl-C stops", err=True)
    run_server(settings)


@cli.command("eval")
@click.argument("questions_file", metavar="QUESTIONS.yaml", type=click.Path(exists=True, dir_okay=False))
@click.option("--models", metavar="A,B,...", help="GGUF paths or file names in the models folder; 'default' is the configured model [default: default].")
@click.option("--prompts", metavar="P,Q,...", help="Prompt names or families (chatml, rlm/rag-prompt, ...); 'default' is detected [default: default].")
@click.option("-k", "--k", "k", type=click.IntRange(min=1), help=setting_help("Chunks retrieved per question", "k"))
@click.option("--max-tokens", type=click.IntRange(min=1), help=setting_help("Answer budget in tokens", "max_tokens"))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Folder for eval.md, eval.json and eval.png [default: DATA_DIR/evals/TIME].")
@click.option("--ingest", "ingest_paths", multiple=True, metavar="PATH", help="Ingest PATH first (repeatable) [default: the file's corpus, if the store is empty].")
@backend_options
@store_options
@json_option
@click.pass_context
@handle_errors
def eval_command(
    ctx: click.Context,
    questions_file: str,
    models: str | None,
    prompts: str | None,
    out_dir: str | None,
    ingest_paths: tuple[str, ...],
    as_json: bool,
    **options: Any,
) -> None:
    """Score models x prompts on a question file: retrieval, facts, grounding, don't-know, speed.

    Prints a table, and writes a Markdown report, a JSON file and a PNG chart to --out.
    Exit status: 0 all answered, 3 some answers or runs failed, 4 none answered.
    """
    from rag.eval import default_out_dir, run_eval

    settings = settings_from(ctx, **options)
    out = output_folder(out_dir, "eval output folder") if out_dir else default_out_dir(settings)
    progress = not as_json and sys.stderr.isatty()
    report = run_eval(
        questions_file, settings, comma_list(models), comma_list(prompts), ingest=list(ingest_paths) or None, progress=progress
    )
    files = report.write(out)
    if as_json:
        emit_json(report.to_dict())
    else:
        for warning in report.warnings:
            click.secho(f"warning: {warning}", fg="yellow", err=True)
        click.echo(report.to_table())
        for run in report.runs:
            if run.error:
                click.secho(f"could not run {run.label}: {run.error}", fg="red", err=True)
        click.echo(f"report: {files['markdown']}\nchart:  {files['chart']}\njson:   {files['json']}")
    if report.status != "done":
        sys.exit(EXIT_PARTIAL if report.status == "partial" else EXIT_NOTHING_DONE)


def main() -> None:
    stop_on_sigterm()  # SIGTERM stops every command as cleanly as Ctrl-C
    run_ending_quickly(cli)
