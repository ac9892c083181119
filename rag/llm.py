"""LLM backends (llama.cpp in-process, GPT4All, a llamafile / llama.cpp server), chosen in one place.

:func:`load_llm` is the only place that picks a backend. It returns a
:class:`LocalLLM`: the LangChain ``LLM`` Runnable plus what the chains need to
know about it (prompt family, stop sequences, context size, a token counter).

Example::

    from rag.llm import load_llm
    local = load_llm(Settings(backend="llamacpp"))
    for token in local.llm.stream("<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n"):
        print(token, end="")
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM, BaseLLM
from langchain_core.outputs import GenerationChunk
from pydantic import ConfigDict, PrivateAttr

from rag.errors import RagError
from rag.models import InvalidModelFile, read_gguf_metadata, resolve_llm_path
from rag.native import quiet_native_stderr
from rag.prompts import choose_family, get_family
from rag.settings import Settings

logger = logging.getLogger(__name__)


class LLMBackendError(RagError, RuntimeError):
    """The LLM backend failed (server down, error event mid-stream, ...)."""


@dataclass
class LocalLLM:
    """A loaded LLM with what the chains need to use it well."""

    llm: BaseLLM
    backend: str
    model_name: str
    family: str
    n_ctx: int
    max_tokens: int
    count_tokens: Callable[[str], int] = field(repr=False)

    @property
    def stop(self) -> list[str]:
        return list(get_family(self.family).stop)


def load_llm(settings: Settings) -> LocalLLM:
    """Build the configured backend. Raises ``ModelNotFound``/``InvalidModelFile`` with the fix."""
    if settings.backend == "llamafile":
        return _load_llamafile(settings)
    path = resolve_llm_path(settings.llm_model, settings)
    meta = read_gguf_metadata(path)
    family = choose_family(settings.prompt, meta.chat_template, path.name)
    stop = _stop_sequences(family, settings)
    if settings.backend == "gpt4all":
        llm: BaseLLM = _build_gpt4all(path, meta.pre_tokenizer, stop, settings)
        counter = _llama_cpp_token_counter(path)
    else:
        llm = _build_llamacpp(path, stop, settings)
        counter = lambda text: len(llm.client.tokenize(text.encode("utf-8"), add_bos=True, special=True))  # noqa: E731
    return LocalLLM(llm, settings.backend, path.name, family, settings.n_ctx, settings.max_tokens, counter)


def _stop_sequences(family: str, settings: Settings) -> list[str]:
    return list(dict.fromkeys([*get_family(family).stop, *settings.stop]))


def _build_llamacpp(path: Path, stop: list[str], settings: Settings) -> BaseLLM:
    from langchain_community.llms import LlamaCpp

    try:
        return LlamaCpp(
            model_path=str(path),
            n_ctx=settings.n_ctx,
            n_batch=settings.n_batch,
            n_threads=settings.n_threads or os.cpu_count(),
            # Prompt evaluation too: llama-cpp-python would take every core (batch workers share them).
            model_kwargs={"n_threads_batch": settings.n_threads or os.cpu_count()},
            n_gpu_layers=settings.n_gpu_layers,
            f16_kv=settings.f16_kv,
            temperature=settings.temperature,
            max_tokens=settings.max_tokens,
            seed=settings.seed,
            stop=stop,
            # LangChain's defaults (10000, 1.0) override the model's own RoPE settings
            # (SmolLM2: base 100000) and degrade its answers; 0 means "from the GGUF".
            rope_freq_base=0.0,
            rope_freq_scale=0.0,
            streaming=True,
            verbose=False,
        )
    except ValueError as error:
        raise InvalidModelFile(f"llama.cpp could not load {path}: {error}") from error


def _llama_cpp_token_counter(path: Path) -> Callable[[str], int]:
    """Count tokens with the model's own tokenizer (vocabulary only: fast, little memory)."""
    from llama_cpp import Llama

    with quiet_native_stderr():
        vocab = Llama(str(path), vocab_only=True, verbose=False)
    return lambda text: len(vocab.tokenize(text.encode("utf-8"), add_bos=True, special=True))


# --- GPT4All --------------------------------------------------------------------------------------

# gpt4all 2.8.2's llama.cpp predates these pre-tokenizer names; each maps to one it knows
# with the same split regex.
GPT4ALL_PRE_TOKENIZER_COMPAT = {"smollm": "starcoder"}


def gpt4all_compatible_copy(path: Path, pre_tokenizer: str | None, cache_dir: Path) -> Path:
    """Return ``path``, or a cached copy whose ``tokenizer.ggml.pre`` gpt4all 2.8.2 understands."""
    replacement = GPT4ALL_PRE_TOKENIZER_COMPAT.get(pre_tokenizer or "")
    if replacement is None:
        return path
    stat = path.stat()
    target = cache_dir / "models" / "gpt4all" / f"{path.stem}.{stat.st_size}-{stat.st_mtime_ns}.gguf"
    if target.is_file():
        return target
    import gguf

    logger.info("writing a gpt4all-compatible copy of %s (pre-tokenizer %s -> %s)", path.name, pre_tokenizer, replacement)
    target.parent.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(path, "r")
    architecture = reader.get_field("general.architecture").contents()
    partial = target.with_suffix(f".tmp{os.getpid()}")
    writer = gguf.GGUFWriter(partial, architecture, endianess=reader.endianess)
    for item in reader.fields.values():
        if item.name == "general.architecture" or item.name.startswith("GGUF."):
            continue
        value_type = item.types[0]
        sub_type = item.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        value = replacement if item.name == "tokenizer.ggml.pre" else item.contents()
        writer.add_key_value(item.name, value, value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    os.replace(partial, target)
    return target


class GPT4AllLLM(LLM):
    """GPT4All over a local GGUF, with real token streaming and special-token parsing.

    LangChain's ``GPT4All`` wrapper neither streams through ``.stream()`` nor parses
    chat markers such as ``<|im_start|>`` as special tokens; this one does both.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_path: str
    max_tokens: int = 256
    temperature: float = 0.1
    top_k: int = 40
    top_p: float = 0.9
    repeat_penalty: float = 1.1
    n_batch: int = 512
    n_threads: int | None = None
    stop: list[str] = []
    allow_download: bool = False
    _client: Any = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "gpt4all"

    @property
    def client(self) -> Any:
        if self._client is None:
            with quiet_native_stderr():
                from gpt4all import GPT4All

                path = Path(self.model_path)
                self._client = GPT4All(
                    path.name, model_path=str(path.parent), allow_download=self.allow_download, device="cpu", verbose=False
                )
            if self.n_threads:
                self._client.model.set_thread_count(self.n_threads)
        return self._client

    def _call(self, prompt: str, stop: list[str] | None = None, run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return "".join(chunk.text for chunk in self._stream(prompt, stop, run_manager, **kwargs))

    def _stream(
        self, prompt: str, stop: list[str] | None = None, run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any
    ) -> Iterator[GenerationChunk]:
        stops = StopSequenceFilter([*self.stop, *(stop or [])])
        tokens = self.client.model.prompt_model_streaming(
            prompt,
            "%1",
            lambda _token_id, _text: not stops.stopped,
            n_predict=kwargs.get("max_tokens", self.max_tokens),
            temp=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repeat_penalty=self.repeat_penalty,
            n_batch=self.n_batch,
            reset_context=True,
            special=True,
        )
        for token in tokens:
            for text in stops.feed(token):
                yield _emit(text, run_manager)
        for text in stops.flush():
            yield _emit(text, run_manager)


def _emit(text: str, run_manager: CallbackManagerForLLMRun | None) -> GenerationChunk:
    if run_manager:
        run_manager.on_llm_new_token(text)
    return GenerationChunk(text=text)


class StopSequenceFilter:
    """Cut a token stream at the first stop sequence, holding back text that may start one."""

    def __init__(self, stops: list[str]):
        self.stops = [stop for stop in stops if stop]
        self.buffer = ""
        self.stopped = False

    def feed(self, text: str) -> list[str]:
        if self.stopped:
            return []
        self.buffer += text
        cut = min((index for stop in self.stops if (index := self.buffer.find(stop)) >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.buffer = self.buffer[:cut], ""
            return [out] if out else []
        hold = max((n for stop in self.stops for n in range(1, len(stop)) if self.buffer.endswith(stop[:n])), default=0)
        out = self.buffer[: len(self.buffer) - hold]
        self.buffer = self.buffer[len(out) :]
        return [out] if out else []

    def flush(self) -> list[str]:
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return [out] if out else []


def _build_gpt4all(path: Path, pre_tokenizer: str | None, stop: list[str], settings: Settings) -> BaseLLM:
    compatible = gpt4all_compatible_copy(path, pre_tokenizer, settings.cache_dir)
    return GPT4AllLLM(
        model_path=str(compatible),
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        n_batch=settings.n_batch,
        n_threads=settings.n_threads,
        stop=stop,
        allow_download=settings.allow_download,
    )


# --- llamafile / llama.cpp server -----------------------------------------------------------------


class LlamafileLLM(LLM):
    """Client of a llamafile / llama.cpp server's ``/completion`` API.

    Unlike LangChain's ``Llamafile`` it has a finite timeout, names the URL when the
    server is down, and raises on an HTTP error or an error event mid-stream instead
    of returning the error text as if it were the answer.
    """

    base_url: str = "http://127.0.0.1:8080"
    request_timeout: float = 120.0
    max_tokens: int = 256
    temperature: float = 0.1
    seed: int = 0
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
        except requests.exceptions.Timeout as error:
            raise LLMBackendError(f"llama.cpp server at {self.base_url} did not answer within {self.request_timeout:g} s") from error
        except requests.exceptions.ConnectionError as error:
            raise LLMBackendError(
                f"cannot reach a llama.cpp server at {self.base_url}: is it running? "
                "Start one with `llama-server -m MODEL.gguf --port 8080` or set RAG_LLAMAFILE_URL."
            ) from error
        with response:
            if response.status_code != 200:
                raise LLMBackendError(f"llama.cpp server at {self.base_url} answered HTTP {response.status_code}: {response.text[:300]}")
            try:
                for line in response.iter_lines(decode_unicode=True):
                    event = _parse_server_event(line, self.base_url)
                    if event is None:
                        continue
                    if event.get("content"):
                        yield _emit(event["content"], run_manager)
                    if event.get("stop"):
                        return
            except requests.exceptions.RequestException as error:
                raise LLMBackendError(f"llama.cpp server at {self.base_url} failed mid-stream: {error}") from error
        # A stream that ends without its final event was cut off: never pass a partial answer as whole.
        raise LLMBackendError(f"llama.cpp server at {self.base_url} closed the stream before the answer was complete")


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


def _load_llamafile(settings: Settings) -> LocalLLM:
    props = server_props(settings.llamafile_url, timeout=min(10.0, settings.request_timeout))
    model_name = Path(props.get("model_path") or "llamafile").name
    family = choose_family(settings.prompt, props.get("chat_template"), model_name)
    n_ctx = int((props.get("default_generation_settings") or {}).get("n_ctx") or settings.n_ctx)
    llm = LlamafileLLM(
        base_url=settings.llamafile_url,
        request_timeout=settings.request_timeout,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        seed=settings.seed,
        stop=_stop_sequences(family, settings),
    )

    def count_tokens(text: str) -> int:
        response = requests.post(
            f"{settings.llamafile_url.rstrip('/')}/tokenize", json={"content": text, "add_special": True}, timeout=settings.request_timeout
        )
        response.raise_for_status()
        return len(response.json()["tokens"])

    return LocalLLM(llm, "llamafile", model_name, family, n_ctx, settings.max_tokens, count_tokens)
