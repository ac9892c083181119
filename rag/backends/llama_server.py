"""The llamafile / llama.cpp server backend: a ``/completion`` client, ``/props`` and ``/tokenize``.

Example::

    served = read_server_model("http://127.0.0.1:8080")
    llm = LlamafileLLM(base_url=served.url, stop=["<|im_end|>"])
    print(served.model_name, served.n_ctx, llm.invoke(prompt))
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import GenerationChunk

from rag.backends.streaming import emit_chunk
from rag.errors import LLMBackendError
from rag.settings import setting_default


class LlamafileLLM(LLM):
    """Client of a llamafile / llama.cpp server's ``/completion`` API.

    Unlike LangChain's ``Llamafile`` it has a finite timeout, names the URL when the
    server is down, and raises on an HTTP error or an error event mid-stream instead
    of returning the error text as if it were the answer.
    """

    base_url: str = setting_default("llamafile_url")
    request_timeout: float = setting_default("request_timeout")
    max_tokens: int = setting_default("max_tokens")
    temperature: float = setting_default("temperature")
    seed: int = setting_default("seed")
    stop: list[str] = []

    @property
    def _llm_type(self) -> str:
        return "llamafile"

    def _call(self, prompt: str, stop: list[str] | None = None, run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return "".join(chunk.text for chunk in self._stream(prompt, stop, run_manager, **kwargs))

    def _stream(
        self, prompt: str, stop: list[str] | None = None, run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any
    ) -> Iterator[GenerationChunk]:
        payload = {
            "prompt": prompt,
            "n_predict": kwargs.get("max_tokens", self.max_tokens),
            "temperature": self.temperature,
            "seed": self.seed,
            "stop": [*self.stop, *(stop or [])],
            "cache_prompt": True,
            "stream": True,
        }
        url = f"{self.base_url.rstrip('/')}/completion"
        try:
            response = requests.post(url, json=payload, stream=True, timeout=(min(10.0, self.request_timeout), self.request_timeout))
        except requests.exceptions.RequestException as error:
            raise _request_failed(error, self.base_url, self.request_timeout) from error
        with response:
            if response.status_code != 200:
                raise LLMBackendError(f"llama.cpp server at {self.base_url} answered HTTP {response.status_code}: {_one_line(response.text)}")
            try:
                for line in response.iter_lines(decode_unicode=True):
                    event = _parse_server_event(line, self.base_url)
                    if event is None:
                        continue
                    if event.get("content"):
                        yield emit_chunk(event["content"], run_manager)
                    if event.get("stop"):
                        return
            except requests.exceptions.RequestException as error:
                raise LLMBackendError(f"llama.cpp server at {self.base_url} failed mid-stream: {error}") from error
        # A stream that ends without its final event was cut off: never pass a partial answer as whole.
        raise LLMBackendError(f"llama.cpp server at {self.base_url} closed the stream before the answer was complete")


def _request_failed(error: requests.exceptions.RequestException, base_url: str, timeout: float, doing: str = "") -> LLMBackendError:
    """The one-line error for a request to the server that got no reply (``doing``: what it was for)."""
    if isinstance(error, requests.exceptions.Timeout):
        return LLMBackendError(f"llama.cpp server at {base_url} did not answer within {timeout:g} s{doing}")
    if isinstance(error, requests.exceptions.ConnectionError):
        return LLMBackendError(
            f"cannot reach a llama.cpp server at {base_url}{doing}: is it running? "
            "Start one with `llama-server -m MODEL.gguf --port 8080` or set RAG_LLAMAFILE_URL."
        )
    return LLMBackendError(f"request to the llama.cpp server at {base_url} failed{doing}: {_one_line(str(error))}")


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


def _parse_server_event(line: str, base_url: str) -> dict | None:
    """Decode one server-sent event line; raise on an error event."""
    if not line or line.startswith(":"):
        return None
    if line.startswith("error:"):
        raise LLMBackendError(f"llama.cpp server at {base_url} reported an error: {line[len('error:') :].strip()[:300]}")
    if not line.startswith("data:"):
        raise LLMBackendError(f"unexpected reply from llama.cpp server at {base_url}: {line[:300]}")
    body = line[len("data:") :].strip()
    if body == "[DONE]":
        return {"stop": True}
    try:
        event = json.loads(body)
    except json.JSONDecodeError as error:
        raise LLMBackendError(f"malformed event from llama.cpp server at {base_url}: {body[:300]}") from error
    if "error" in event:
        raise LLMBackendError(f"llama.cpp server at {base_url} reported an error: {event['error']}")
    return event


def server_props(base_url: str, timeout: float = 5.0) -> dict:
    """The server's ``/props`` (model path, chat template, context size); raises LLMBackendError."""
    try:
        response = requests.get(f"{base_url.rstrip('/')}/props", timeout=timeout)
        response.raise_for_status()
        return response.json()
    except requests.exceptions.RequestException as error:
        raise LLMBackendError(f"cannot reach a llama.cpp server at {base_url}: {error}") from error


@dataclass(frozen=True)
class ServerModel:
    """What a llama.cpp server serves, as its ``/props`` tells."""

    url: str
    model_path: str | None
    chat_template: str | None
    n_ctx: int | None  # the context of each of its slots, when it says

    @property
    def model_name(self) -> str:
        """The served GGUF's file name (``llamafile`` when the server does not say)."""
        return Path(self.model_path or "llamafile").name


def read_server_model(base_url: str, timeout: float = 5.0) -> ServerModel:
    """What the server at ``base_url`` serves (model, chat template, context); raises LLMBackendError."""
    props = server_props(base_url, timeout)
    n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx")
    return ServerModel(base_url, props.get("model_path"), props.get("chat_template"), int(n_ctx) if n_ctx else None)


def server_token_counter(base_url: str, timeout: float) -> Callable[[str], int]:
    """Count tokens with the server's tokenizer (``/tokenize``); any failure is an LLMBackendError."""
    url = f"{base_url.rstrip('/')}/tokenize"

    def count_tokens(text: str) -> int:
        try:
            response = requests.post(url, json={"content": text, "add_special": True}, timeout=(min(10.0, timeout), timeout))
        except requests.exceptions.RequestException as error:
            raise _request_failed(error, base_url, timeout, " (counting tokens)") from error
        if response.status_code != 200:
            raise LLMBackendError(f"llama.cpp server at {base_url} answered HTTP {response.status_code} to /tokenize: {_one_line(response.text)}")
        try:
            return len(response.json()["tokens"])
        except (ValueError, KeyError, TypeError) as error:
            raise LLMBackendError(f"unexpected /tokenize reply from llama.cpp server at {base_url}: {_one_line(response.text)}") from error

    return count_tokens
