"""``rag serve``: an OpenAI-compatible HTTP API over the indexed documents, and its chat page.

Example::

    from rag.serve import create_app, run_server
    run_server(Settings(host="127.0.0.1", port=8000))     # what `rag serve` runs
"""

from rag.serve.app import UnsafeBind, create_app, run_server

__all__ = ["UnsafeBind", "create_app", "run_server"]
