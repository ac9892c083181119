"""The GPT4All backend: a streaming LangChain LLM over a local GGUF, and the compatible copy it may need.

Example::

    llm = build_gpt4all(path, read_gguf_metadata(path).pre_tokenizer, ["<|im_end|>"], Settings(backend="gpt4all"))
    for token in llm.stream(prompt):
        print(token, end="")
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM, BaseLLM
from langchain_core.outputs import GenerationChunk
from pydantic import ConfigDict, PrivateAttr

from rag.backends.streaming import StopSequenceFilter, emit_chunk
from rag.native import quiet_native_stderr
from rag.settings import Settings, setting_default

logger = logging.getLogger(__name__)

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
    max_tokens: int = setting_default("max_tokens")
    temperature: float = setting_default("temperature")
    # GPT4All's own sampling knobs (not settings: llama.cpp keeps LangChain's defaults for them).
    top_k: int = 40
    top_p: float = 0.9
    repeat_penalty: float = 1.1
    n_batch: int = setting_default("n_batch")
    n_threads: int | None = setting_default("n_threads")
    stop: list[str] = []
    allow_download: bool = setting_default("allow_download")
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
                yield emit_chunk(text, run_manager)
        for text in stops.flush():
            yield emit_chunk(text, run_manager)


def build_gpt4all(path: Path, pre_tokenizer: str | None, stop: list[str], settings: Settings) -> BaseLLM:
    """A :class:`GPT4AllLLM` over ``path`` (or its compatible copy), stopping every call at ``stop``."""
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
