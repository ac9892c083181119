"""The ``rag`` command: a thin layer that parses flags into Settings and calls the library."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from rag.errors import RagError
from rag.settings import Settings

# Exit statuses (documented in the README).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3  # some sources/documents failed, the rest landed
EXIT_NOTHING_DONE = 4  # every source failed, nothing changed
EXIT_INTERRUPTED = 130


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def handle_errors(command: Callable) -> Callable:
    """Turn expected errors into one line on stderr and a non-zero exit, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RagError as error:
            click.secho(f"error: {error}", fg="red", err=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


def store_options(command: Callable) -> Callable:
    command = click.option("--collection", help="Collection name [default: settings, 'default'].")(command)
    return click.option("--store", "store_dir", type=click.Path(file_okay=False), help="Store directory [default: settings].")(command)


def model_options(command: Callable) -> Callable:
    command = click.option("--prompt", help="Prompt name or family (chatml, llama2, rlm/rag-prompt, ...) [default: detected].")(command)
    command = click.option("--backend", type=click.Choice(["llamacpp", "gpt4all", "llamafile"]), help="LLM backend [default: llamacpp].")(command)
    command = click.option("--server", "llamafile_url", help="llama.cpp / llamafile server URL for --backend llamafile.")(command)
    return click.option("--model", "llm_model", help="GGUF path or file name in the models folder [default: SmolLM2-135M].")(command)


def json_option(command: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Ask questions of, and summarize, your own documents with local models only."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)], format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = Settings()


def settings_from(ctx: click.Context, **overrides: Any) -> Settings:
    return ctx.obj.with_overrides(**overrides)


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
        click.echo(f"{'':<10} from {model.origin}{status}")


@cli.command()
@model_options
@json_option
@click.pass_context
@handle_errors
def doctor(ctx: click.Context, as_json: bool, **options: Any) -> None:
    """Check offline readiness: models present and loadable, llama.cpp build, server."""
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
@click.option("--chunk-size", type=int, help="Characters per chunk [default: 500].")
@click.option("--chunk-overlap", type=int, help="Characters shared by neighbouring chunks [default: 0].")
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching GLOB in folders (repeatable): '*.md', 'docs/*.html'.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out files and folders matching GLOB (repeatable).")
@click.option("--hidden", "include_hidden", is_flag=True, default=None, help="Also read hidden files and folders.")
@click.option("--allow-private-network", is_flag=True, default=None, help="Allow URLs on loopback and private networks.")
@click.option("--keep-boilerplate", is_flag=True, help="Keep web pages' navigation, headers and footers.")
@click.option("--source-timeout", type=float, metavar="SECONDS", help="Time allowed to load one source [default: 60].")
@click.option("--max-source-mb", type=float, metavar="MB", help="Largest file or web page read [default: 20].")
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
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    **options: Any,
) -> None:
    """Index files, folders and URLs (http/https) into the store.

    Unchanged sources are skipped, changed ones replaced; a source that fails keeps
    what it had. Exit status: 0 all loaded, 3 some failed, 4 nothing could be done.
    """
    from rag.ingest import ingest as run_ingest

    settings = settings_from(
        ctx,
        include=list(include) or None,
        exclude=list(exclude) or None,
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
            click.secho(f"failed: {failure.source}: {failure.reason}", fg="yellow", err=True)
    if report.nothing_done:
        sys.exit(EXIT_NOTHING_DONE)
    if report.failures:
        sys.exit(EXIT_PARTIAL)


@cli.command()
@click.argument("query")
@click.option("-k", type=int, help="Number of chunks [default: 4].")
@store_options
@json_option
@click.pass_context
@handle_errors
def search(ctx: click.Context, query: str, as_json: bool, k: int | None, **options: Any) -> None:
    """Show the chunks most similar to QUERY, with score, source and title."""
    from rag.ingest import search as run_search

    settings = settings_from(ctx, k=k, **options)
    hits = run_search(query, settings.k, settings)
    if as_json:
        emit_json(
            [
                {"score": round(score, 4), "text": doc.page_content, **{key: doc.metadata[key] for key in ("source", "title", "page", "start_index") if key in doc.metadata}}
                for doc, score in hits
            ]
        )
        return
    for rank, (doc, score) in enumerate(hits, start=1):
        page = f" p.{doc.metadata['page']}" if "page" in doc.metadata else ""
        click.echo(f"[{rank}] {score:.3f}  {doc.metadata.get('title', '')}  ({doc.metadata.get('source', '')}{page})")
        click.echo("    " + " ".join(doc.page_content.split())[:240])


@cli.command()
@store_options
@json_option
@click.pass_context
@handle_errors
def sources(ctx: click.Context, as_json: bool, **options: Any) -> None:
    """List the indexed sources: chunks, when last ingested, title."""
    from rag.ingest import list_sources

    entries = list_sources(settings_from(ctx, **options))
    if as_json:
        emit_json([entry.to_dict() for entry in entries])
        return
    for entry in entries:
        state = "" if entry.state == "indexed" else "  [incomplete: ingest it again]"
        click.echo(f"{entry.chunks:>6}  {entry.ingested_at or '-':<25}  {entry.source}  ({entry.title or ''}){state}")
    click.echo(f"{len(entries)} sources, {sum(entry.chunks for entry in entries)} chunks", err=True)


@cli.command()
@click.argument("items", nargs=-1, required=True, metavar="SOURCE...")
@store_options
@json_option
@click.pass_context
@handle_errors
def forget(ctx: click.Context, items: tuple[str, ...], as_json: bool, **options: Any) -> None:
    """Remove sources (a URL, a file, or every source under a folder) from the store."""
    from rag.ingest import forget as run_forget

    report = run_forget(items, settings_from(ctx, **options))
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(f"removed {report.sources_deleted} sources, {report.chunks_deleted} chunks")


@cli.command()
@click.argument("question")
@click.option("-k", type=int, help="Number of chunks retrieved [default: 4].")
@model_options
@store_options
@click.option("--no-stream", is_flag=True, help="Print the answer only when it is complete.")
@json_option
@click.pass_context
@handle_errors
def ask(ctx: click.Context, question: str, as_json: bool, no_stream: bool, k: int | None, **options: Any) -> None:
    """Answer QUESTION from the indexed documents, then list its sources."""
    from rag.answer import Answer, Assistant

    assistant = Assistant(settings_from(ctx, k=k, **options))
    stream = not (no_stream or as_json)
    answer: Answer | None = None
    for item in assistant.stream(question):
        if isinstance(item, Answer):
            answer = item
        elif stream:
            click.echo(item, nl=False)
    assert answer is not None
    if as_json:
        data = answer.to_dict()
        data["sources"] = [{key: source[key] for key in ("number", "source", "title", "score")} for source in data["sources"]]
        emit_json(data)
        return
    click.echo("" if stream else answer.answer)
    click.echo("\nSources:")
    for source in answer.sources:
        click.echo(f"  [{source.number}] {source.title} ({source.source}) score {source.score:.3f}")


def main() -> None:
    cli(prog_name="rag")
