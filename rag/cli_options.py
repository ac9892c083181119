"""The flags the ``rag`` commands share, with help texts whose defaults come from :class:`rag.settings.Settings`.

Example::

    @cli.command()
    @model_options
    @store_options
    @json_option
    def ask(**options): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

import click

from rag.settings import Backend, Executor, setting_default, shown_default


def setting_help(text: str, setting: str, shown: Callable[[Any], Any] | None = None) -> str:
    """``text`` with the default of the :class:`rag.settings.Settings` field ``setting`` (``shown`` converts it, e.g. to MB)."""
    default = shown(setting_default(setting)) if shown else shown_default(setting)
    if isinstance(default, float):
        default = f"{default:g}"
    return f"{text} [default: {default}]."


def store_options(command: Callable) -> Callable:
    command = click.option(
        "--chroma-url", metavar="URL", help="Chroma server (http://127.0.0.1:8000) instead of --store; token from RAG_CHROMA_TOKEN. Loopback or a private network only."
    )(command)
    command = click.option("--collection", help=setting_help("Collection name", "collection"))(command)
    return click.option("--store", "store_dir", type=click.Path(file_okay=False), help=setting_help("Store directory", "store_dir"))(command)


def executor_options(command: Callable) -> Callable:
    """--workers, --executor and --ray-address: how many batch workers, and where they run."""
    command = click.option(
        "--ray-address", metavar="ADDRESS", help="Ray cluster to join ('auto' or HOST:PORT) [default: start a local one on loopback]."
    )(command)
    command = click.option(
        "--executor", type=click.Choice(get_args(Executor)), help=setting_help("Run the workers here (local) or on a Ray cluster (ray; pip install 'rag[ray]')", "executor")
    )(command)
    return click.option("--workers", type=click.IntRange(min=1), help="Documents summarized at once [default: one per --server, else 1].")(command)


def backend_options(command: Callable | None = None, *, multiple_servers: bool = False) -> Callable:
    """--backend and --server; ``multiple_servers``: --server is repeatable (a list of URLs in ``servers``)."""

    def decorate(command: Callable) -> Callable:
        command = click.option("--backend", type=click.Choice(get_args(Backend)), help=setting_help("LLM backend", "backend"))(command)
        if multiple_servers:
            server = click.option(
                "--server", "servers", multiple=True, metavar="URL", help="llama.cpp / llamafile server to use (repeatable; implies --backend llamafile)."
            )
        else:
            server = click.option("--server", "llamafile_url", metavar="URL", help="llama.cpp / llamafile server URL (implies --backend llamafile).")
        return server(command)

    return decorate(command) if command else decorate


def model_options(command: Callable | None = None, *, multiple_servers: bool = False, prompt_help: str = "Prompt name or family (chatml, llama2, rlm/rag-prompt, ...)") -> Callable:
    """--model, --backend, --server and --prompt (see :func:`backend_options` for ``multiple_servers``)."""

    def decorate(command: Callable) -> Callable:
        command = click.option("--prompt", help=setting_help(prompt_help, "prompt"))(command)
        command = backend_options(command, multiple_servers=multiple_servers)
        return click.option("--model", "llm_model", help=setting_help("GGUF path or file name in the models folder", "llm_model"))(command)

    return decorate(command) if command else decorate


def folder_options(command: Callable) -> Callable:
    """--include/--exclude/--hidden: which files of a folder are read (ingest and summarize)."""
    command = click.option("--hidden", "include_hidden", is_flag=True, default=None, help="Also read hidden files and folders.")(command)
    command = click.option("--exclude", multiple=True, callback=_list_or_none, metavar="GLOB", help="Leave out files and folders matching GLOB (repeatable).")(command)
    return click.option(
        "--include", multiple=True, callback=_list_or_none, metavar="GLOB", help="Only files matching GLOB in folders (repeatable): '*.md', 'docs/*.html'."
    )(command)


def _list_or_none(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str] | None:
    return list(value) or None


def json_option(command: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(command)


def serve_options(command: Callable) -> Callable:
    """--host, --port, --api-key, --queue-size, --cors-origin and -k of ``rag serve``."""
    command = click.option("-k", type=int, help=setting_help("Number of chunks retrieved per question", "k"))(command)
    command = click.option(
        "--cors-origin", "cors_origins", multiple=True, callback=_list_or_none, metavar="ORIGIN", help="Let pages from ORIGIN call the API (repeatable) [default: none]."
    )(command)
    command = click.option("--queue-size", type=click.IntRange(min=0), help=setting_help("Requests that may wait for the model before 429", "queue_size"))(command)
    command = click.option("--api-key", help="Bearer token every API request must carry (or RAG_API_KEY) [default: none].")(command)
    command = click.option("--port", type=click.IntRange(0, 65535), help=setting_help("Port to listen on", "port"))(command)
    return click.option("--host", help=setting_help("Address to listen on; beyond loopback an API key is required", "host"))(command)


def comma_list(value: str | None) -> list[str] | None:
    """``"a, b,,c"`` as ``["a", "b", "c"]`` (a flag taking a comma-separated list); ``None`` when not given."""
    return [item.strip() for item in value.split(",") if item.strip()] if value else None
