"""The ASGI app of ``rag serve``: OpenAI-compatible endpoints over the indexed documents, /health, and the chat page.

Endpoints: ``POST /v1/chat/completions`` (streamed or not, with ``sources``),
``GET /v1/models``, ``POST /v1/embeddings``, ``POST /v1/search``, ``GET /health`` and
the chat page at ``/``. Errors use OpenAI's shape; nothing in a request names a file,
a model file or a URL: the models and the store are the ones the server was started with.

Example::

    from rag.serve import run_server
    run_server(Settings(port=8000))         # blocks; Ctrl-C stops it
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from rag.answer import Answer
from rag.budget import ContextOverflow
from rag.errors import EmptyQuestion, LLMBackendError, RagError, require_question
from rag.serve.engine import GenerationRun, ServedModels
from rag.serve.limits import GenerationSlot, check_api_key, is_loopback, read_body
from rag.serve.schemas import (
    ApiError,
    ChatRequest,
    EmbeddingsRequest,
    SearchRequest,
    chat_chunk,
    chat_completion,
    completion_id,
    encode_embedding,
    parse_json,
    sse,
)
from rag.settings import Settings

logger = logging.getLogger(__name__)

STATIC = resources.files("rag.serve") / "static"


class UnsafeBind(RagError, ValueError):
    """``rag serve`` asked to listen beyond loopback without an API key."""


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def api_error_from(error: BaseException) -> ApiError:
    """The HTTP status of a library error (anything unexpected is a 500: a bug)."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, (EmptyQuestion, ContextOverflow)):
        return ApiError(400, str(error), code="invalid_request")
    if isinstance(error, LLMBackendError):
        return ApiError(503, f"the LLM backend failed: {error}", code="backend_error")
    if isinstance(error, RagError):
        return ApiError(503, str(error), code="not_ready")
    logger.error("internal error", exc_info=error)
    return ApiError(500, f"internal error: {type(error).__name__}", code="internal_error")


def create_app(settings: Settings, models: ServedModels | None = None) -> FastAPI:
    """The app over ``models`` (loaded in the background at startup when not loaded yet)."""
    models = models or ServedModels(settings)
    slot = GenerationSlot(settings.queue_size)
    api_key = settings.api_key.get_secret_value() if settings.api_key else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = None
        if not models.ready:
            loading = asyncio.get_running_loop().run_in_executor(None, models.load)
            loading.add_done_callback(lambda future: future.exception())  # the error is in models.error
        yield
        if loading is not None and not loading.done():
            loading.cancel()

    app = FastAPI(title="rag", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    app.state.models = models
    app.state.slot = slot

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, error: HTTPException) -> JSONResponse:
        return error_response(ApiError(error.status_code, str(error.detail), code="not_found" if error.status_code == 404 else None))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(ApiError(400, f"invalid request: {error.errors()[0]['msg']}"))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, error: Exception) -> JSONResponse:
        return error_response(api_error_from(error))

    async def parsed(request: Request, schema: type[BaseModel]) -> Any:
        """Auth, readiness, the bounded body, then the schema (400 naming the field)."""
        check_api_key(request, api_key)
        require_ready()
        data = parse_json(await read_body(request, settings.max_request_bytes))
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_request")
        try:
            return schema.model_validate(data)
        except ValidationError as error:
            raise ApiError.from_validation(error) from None

    def require_ready() -> None:
        if not models.ready:
            why = f"the models could not be loaded: {models.error}" if models.error else "the models are still loading: retry shortly"
            raise ApiError(503, why, code="not_ready", headers={} if models.error else {"Retry-After": "2"})

    def require_model(name: str | None, served: str, role: str) -> None:
        if name not in (None, "", served):
            raise ApiError(404, f"unknown {role} model {name!r}: this server serves {served!r} (see GET /v1/models)", code="model_not_found", param="model")

    @app.get("/health")
    async def health() -> JSONResponse:
        state = "ok" if models.ready else ("error" if models.error else "loading")
        body = {"status": state, "auth": bool(api_key), **slot.to_dict()}
        if models.error:
            body["error"] = models.error
        return JSONResponse(body, status_code=200 if models.ready else 503)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        check_api_key(request, api_key)
        require_ready()
        llm = models.llm
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {"id": llm.model_name, "object": "model", "created": created, "owned_by": "rag", "role": "llm", "backend": llm.backend, "n_ctx": llm.n_ctx},
                {"id": models.embedder_name, "object": "model", "created": created, "owned_by": "rag", "role": "embedding"},
            ],
        }

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict:
        body: EmbeddingsRequest = await parsed(request, EmbeddingsRequest)
        require_model(body.model, models.embedder_name, "embedding")
        vectors = await asyncio.to_thread(models.embeddings.embed_documents, body.input)
        tokens = sum(len(text.split()) for text in body.input)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": index, "embedding": encode_embedding(vector, body.encoding_format)} for index, vector in enumerate(vectors)],
            "model": models.embedder_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.post("/v1/search")
    async def search(request: Request) -> dict:
        from rag.indexing import hit_to_dict, search as run_search

        body: SearchRequest = await parsed(request, SearchRequest)
        try:
            require_question(body.query, "search query", '{"query": "when was the lighthouse built?"}')
            hits = await asyncio.to_thread(run_search, body.query, body.k or settings.k, settings, models.embeddings)
        except RagError as error:
            raise api_error_from(error) from None
        return {"object": "list", "data": [hit_to_dict(doc, score) for doc, score in hits]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body: ChatRequest = await parsed(request, ChatRequest)
        llm = models.llm
        require_model(body.model, llm.model_name, "chat")
        question, history = body.conversation()
        try:
            require_question(question, "question (the last user message)", '{"role": "user", "content": "When was the lighthouse first lit?"}')
        except EmptyQuestion as error:
            raise ApiError(400, str(error), param="messages") from None
        max_tokens = body.answer_tokens
        if max_tokens is not None and max_tokens > llm.n_ctx // 2:
            raise ApiError(400, f"max_tokens {max_tokens} is more than half the model's {llm.n_ctx}-token context: ask for at most {llm.n_ctx // 2}", param="max_tokens")

        def work(cancel: threading.Event) -> Iterator[Any]:
            options = {"max_tokens": max_tokens, "temperature": body.temperature, "stop": body.stop}
            return models.chat_session(history, cancel=cancel, **options).stream(question)

        run = GenerationRun(work, slot, gone=request.is_disconnected)
        await run.start()
        items = run.__aiter__()
        try:
            first = await items.__anext__()
        except StopAsyncIteration:
            raise ApiError(499, "client closed the request") from None
        except Exception as error:
            raise api_error_from(error) from None
        answer_limit = max_tokens or llm.max_tokens
        cid = completion_id()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                stream_chunks(cid, llm.model_name, first, items, run, answer_limit, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        parts: list[str] = []
        answer: Answer | None = None
        try:
            async for item in chain_first(first, items):
                if isinstance(item, Answer):
                    answer = item
                else:
                    parts.append(item)
        except Exception as error:
            raise api_error_from(error) from None
        finally:
            run.stop()
        if answer is None:  # the client left before the end
            raise ApiError(499, "client closed the request")
        usage, finish = usage_of(answer, "".join(parts), answer_limit)
        return chat_completion(cid, llm.model_name, answer.answer, finish, usage, cited(answer), rag_metadata(answer))

    async def stream_chunks(
        cid: str, model: str, first: Any, items: AsyncIterator[Any], run: GenerationRun, limit: int, include_usage: bool
    ) -> AsyncIterator[bytes]:
        yield sse(chat_chunk(cid, model, {"role": "assistant", "content": ""}))
        parts: list[str] = []
        try:
            async for item in chain_first(first, items):
                if isinstance(item, Answer):
                    usage, finish = usage_of(item, "".join(parts), limit)
                    yield sse(chat_chunk(cid, model, {}, finish, sources=cited(item), rag=rag_metadata(item)))
                    if include_usage:
                        yield sse(chat_chunk(cid, model, None, usage=usage))
                elif item:
                    parts.append(item)
                    yield sse(chat_chunk(cid, model, {"content": item}))
        except Exception as error:  # mid-stream: the status is sent already, so an error event
            yield sse(api_error_from(error).body())
        finally:
            run.stop()  # the client left (a cancelled stream) or the answer is complete
        yield sse("[DONE]")

    def usage_of(answer: Answer, raw: str, limit: int) -> tuple[dict, str]:
        prompt = int((answer.metadata.get("budget") or {}).get("prompt_tokens", 0))
        completion = models.count_tokens(raw)
        finish = "length" if completion >= limit else "stop"
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}, finish

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/", include_in_schema=False)
    async def chat_page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    return app


async def chain_first(first: Any, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in items:
        yield item


def cited(answer: Answer) -> list[dict]:
    """The sources an answer's ``[n]`` refer to: number, source, title, score."""
    return answer.to_dict(chunks=False)["sources"]


def rag_metadata(answer: Answer) -> dict:
    keys = ("standalone_question", "condense", "backend", "unmentioned")
    return {"prompt": answer.prompt, **{key: answer.metadata[key] for key in keys if key in answer.metadata}}


def check_bind(settings: Settings) -> None:
    """Refuse to listen beyond loopback without an API key (:class:`UnsafeBind`)."""
    if not is_loopback(settings.host) and not settings.api_key:
        raise UnsafeBind(
            f"rag serve would listen on {settings.host} without an API key: anyone who can reach it could query your documents; "
            "set --api-key or RAG_API_KEY, or bind --host 127.0.0.1"
        )


def run_server(settings: Settings) -> None:
    """Load the models, then serve the API and chat page on ``settings.host``:``settings.port`` until interrupted.

    Raises :class:`UnsafeBind` (a non-loopback host without an API key) and whatever
    loading finds missing (no model, an empty store) before it listens.
    """
    import uvicorn

    check_bind(settings)
    models = ServedModels(settings)
    models.load()
    logger.info("serving %s on http://%s:%d", models.llm.model_name, settings.host, settings.port)
    uvicorn.run(create_app(settings, models), host=settings.host, port=settings.port, log_level="warning", access_log=False, timeout_graceful_shutdown=3)
