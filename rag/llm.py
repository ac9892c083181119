"""LLM backends (llama.cpp in-process, GPT4All, a llamafile / llama.cpp server), chosen in one place.

:func:`load_llm` is the only place that picks a backend. It returns a
:class:`LocalLLM`: the LangChain ``LLM`` Runnable plus what the chains need to
know about it (prompt family, stop sequences, context size, a token counter).
The LLM stops every call at the family's end-of-turn markers and the user's extra
stops; :meth:`LocalLLM.for_task` adds a task's own stops (a QA answer may end at
a blank line, a summary must not).

Example::

    from rag.llm import load_llm
    local = load_llm(Settings(backend="llamacpp"))
    for token in local.llm.stream("<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n"):
        print(token, end="")
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelLike
from langchain_core.language_models.llms import LLM, BaseLLM
from langchain_core.outputs import GenerationChunk
from pydantic import ConfigDict, PrivateAttr

from rag.errors import RagError
from rag.models import InvalidModelFile, read_gguf_metadata, resolve_llm_path
from rag.native import quiet_native_stderr
from rag.prompts import choose_family, get_family, get_spec
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
        """The family's stop sequences, which end every call (``llm`` carries them)."""
        return list(get_family(self.family).stop)

    def for_task(self, kind: str) -> LanguageModelLike:
        """The LLM with the stop sequences of one task (``rag``, ``condense``, ...) added to its own.

        Summaries (``summarize``, ``map``, ``reduce``) have none of their own: they get :attr:`llm`.
        """
        stop = list(get_spec(self.family, kind).stop)
        return self.llm.bind(stop=stop) if stop else self.llm


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
    """Stops for every call: the family's end-of-turn markers and the user's extra stops."""
    return list(dict.fromkeys([*get_family(family).stop, *settings.stop]))


@functools.cache
def _llamacpp_class() -> type[BaseLLM]:
    """LangChain's ``LlamaCpp``, taking a call's stop sequences in addition to its own.

    LangChain's raises when both are given; a task's stops (:meth:`LocalLLM.for_task`)
    must add to the end-of-turn markers the LLM carries for every call.
    """
    from langchain_community.llms import LlamaCpp

    class StopMergingLlamaCpp(LlamaCpp):
        def _get_parameters(self, stop: list[str] | None = None) -> dict[str, Any]:
            params = super()._get_parameters(None)
            params["stop"] = list(dict.fromkeys([*params["stop"], *(stop or [])]))
            return params

    return StopMergingLlamaCpp


def _build_llamacpp(path: Path, stop: list[str], settings: Settings) -> BaseLLM:
    try:
        return _llamacpp_class()(
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
    """Return ``path``, or a cached copy whose ``tokenizer.ggml.pre`` gpt4all 2.8.2 understands.

    The copy is written to a temporary name and renamed when complete, under a lock, so a
    process that dies mid-write never leaves a partial file under the copy's name; the
    temporary files such a process left are removed by the next writer.
    """
    replacement = GPT4ALL_PRE_TOKENIZER_COMPAT.get(pre_tokenizer or "")
    if replacement is None:
        return path
    stat = path.stat()
    folder = cache_dir / "models" / "gpt4all"
    target = folder / f"{path.stem}.{stat.st_size}-{stat.st_mtime_ns}.gguf"
    if target.is_file():
        return target
    import filelock

    folder.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(folder / f".{target.name}.lock")):
        if target.is_file():  # another process wrote it while we waited
            return target
        # Every writer holds the lock: a temporary file seen now was left by one that died.
        for stale in folder.iterdir():
            name = stale.name  # ours: .TARGET.PID.THREAD.tmp; earlier versions: TARGET-STEM.tmpPID
            if (name.startswith(f".{target.name}.") and name.endswith(".tmp")) or name.startswith(f"{target.stem}.tmp"):
                logger.info("removing %s, a partial copy left by an interrupted run", name)
                stale.unlink(missing_ok=True)
        logger.info("writing a gpt4all-compatible copy of %s (pre-tokenizer %s -> %s)", path.name, pre_tokenizer, replacement)
        partial = folder / f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            _write_with_pre_tokenizer(path, partial, replacement)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return target


def _write_with_pre_tokenizer(source: Path, destination: Path, pre_tokenizer: str) -> None:
    """Copy a GGUF to ``destination`` with ``tokenizer.ggml.pre`` replaced, flushed to disk."""
    import gguf

    reader = gguf.GGUFReader(source, "r")
    architecture = reader.get_field("general.architecture").contents()
    writer = gguf.GGUFWriter(destination, architecture, endianess=reader.endianess)
    for item in reader.fields.values():
        if item.name == "general.architecture" or item.name.startswith("GGUF."):
            continue
        value_type = item.types[0]
        sub_type = item.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        value = pre_tokenizer if item.name == "tokenizer.ggml.pre" else item.contents()
        writer.add_key_value(item.name, value, value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    with open(destination, "rb+") as written:
        os.fsync(written.fileno())


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
                        yield _emit(event["content"], run_manager)
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

    counter = _server_token_counter(settings.llamafile_url, settings.request_timeout)
    return LocalLLM(llm, "llamafile", model_name, family, n_ctx, settings.max_tokens, counter)


def _server_token_counter(base_url: str, timeout: float) -> Callable[[str], int]:
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
