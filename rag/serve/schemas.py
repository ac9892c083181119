"""The OpenAI request and response shapes the API speaks, and its errors in OpenAI's error shape.

Example::

    request = ChatRequest.model_validate(body)        # raises pydantic.ValidationError
    question, history = request.conversation()       # ApiError(400) on bad roles or order
    raise ApiError(404, "unknown model x", code="model_not_found", param="model")
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """An error the API answers with its HTTP status and OpenAI's error body."""

    TYPES = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    @property
    def type(self) -> str:
        if self.status >= 500 and self.status != 503:
            return "server_error"
        return self.TYPES.get(self.status, "invalid_request_error")

    def body(self) -> dict:
        """``{"error": {"message", "type", "param", "code"}}`` as OpenAI sends it."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    @classmethod
    def from_validation(cls, error: ValidationError) -> ApiError:
        """A 400 naming the first field pydantic rejected."""
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return cls(400, f"invalid request: {where}: {first['msg']}", code="invalid_request", param=where or None)


class TextPart(BaseModel):
    """One part of a message's content; only text parts are understood."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's fields that rag honours; unknown ones are ignored."""

    model_config = ConfigDict(extra="ignore")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    stop: str | list[str] | None = Field(None, validate_default=True)
    n: int = Field(1, ge=1, le=1)

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not stop for stop in stops):
            raise ValueError("give at most 4 non-empty stop sequences")
        return stops

    @property
    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def conversation(self) -> tuple[str, list[BaseMessage]]:
        """The question (the last message, from the user) and the exchanges before it.

        System messages are accepted and left out: rag answers with its own prompt.
        """
        for index, message in enumerate(self.messages):
            if message.role not in ROLES:
                raise ApiError(400, f"messages[{index}].role must be one of {', '.join(ROLES)}, not {message.role!r}", param=f"messages.{index}.role")
        turns = [message for message in self.messages if message.role != "system"]
        if not turns or turns[-1].role != "user":
            raise ApiError(400, "the last message must be the user's question", param="messages")
        history: list[BaseMessage] = [HumanMessage(m.text) if m.role == "user" else AIMessage(m.text) for m in turns[:-1]]
        return turns[-1].text, history


class EmbeddingsRequest(BaseModel):
    """``POST /v1/embeddings``: text or a list of texts (token arrays are not accepted)."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"

    @field_validator("input")
    @classmethod
    def _bounded(cls, value: str | list[str]) -> list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts or len(texts) > 256:
            raise ValueError("give 1 to 256 texts")
        return texts


class SearchRequest(BaseModel):
    """``POST /v1/search``: the retriever's chunks for a query, as ``rag search --json`` prints them."""

    model_config = ConfigDict(extra="ignore")

    query: str
    k: int | None = Field(None, ge=1, le=100)


def encode_embedding(vector: list[float], encoding_format: str) -> list[float] | str:
    """A vector as OpenAI sends it: floats, or base64 of little-endian float32 (the ``openai`` client's default)."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def parse_json(raw: bytes) -> Any:
    """The body as JSON, or a 400 in OpenAI's shape (nesting too deep for the parser included)."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, f"the request body is not valid JSON: {error}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "the request body is not valid JSON: nested too deeply", code="invalid_json") from None


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def chat_completion(cid: str, model: str, content: str, finish_reason: str, usage: dict, sources: list[dict], metadata: dict) -> dict:
    """A non-streamed ``chat.completion``, with the ``sources`` its ``[n]`` citations refer to."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage,
        "sources": sources,
        "rag": metadata,
    }


def chat_chunk(cid: str, model: str, delta: dict, finish_reason: str | None = None, **extra: Any) -> dict:
    """One ``chat.completion.chunk`` of a stream (the last one carries ``sources``)."""
    choices = [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}] if delta is not None else []
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model, "choices": choices, **extra}


def sse(data: dict | str) -> bytes:
    """One server-sent event."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()
