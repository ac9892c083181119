"""The GPT4All backend's compatible copy: made only when needed, atomic, and cleaned after a crash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rag.backends.gpt4all import gpt4all_compatible_copy
from rag.models import default_llm_path, read_gguf_metadata


def test_gpt4all_copy_only_when_pre_tokenizer_unknown(tmp_path):
    path = tmp_path / "model.gguf"
    assert gpt4all_compatible_copy(path, "llama-bpe", tmp_path) == path
    assert gpt4all_compatible_copy(path, None, tmp_path) == path


def write_tiny_gguf(path: Path, pre_tokenizer: str = "smollm") -> Path:
    """A small real GGUF file: a pre-tokenizer name and one tensor."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_pre(pre_tokenizer)
    writer.add_tensor("token_embd.weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def pre_tokenizer_of(path: Path) -> str:
    import gguf

    return gguf.GGUFReader(path, "r").get_field("tokenizer.ggml.pre").contents()


def copies_in(cache: Path) -> list[str]:
    return sorted(entry.name for entry in (cache / "models" / "gpt4all").iterdir() if not entry.name.endswith(".lock"))


DIE_MID_WRITE = """
import os, sys
from pathlib import Path
import gguf
from rag.backends.gpt4all import gpt4all_compatible_copy
gguf.GGUFWriter.write_tensor_data = lambda *args, **kwargs: os._exit(3)  # the process dies mid-write
gpt4all_compatible_copy(Path(sys.argv[1]), "smollm", Path(sys.argv[2]))
"""


@pytest.mark.integration  # a real process, killed mid-write
def test_gpt4all_copy_of_a_process_that_died_mid_write_is_never_used_and_is_cleaned(tmp_path):
    source, cache = write_tiny_gguf(tmp_path / "model.gguf"), tmp_path / "cache"
    died = subprocess.run([sys.executable, "-c", DIE_MID_WRITE, str(source), str(cache)], capture_output=True, text=True, timeout=60)
    assert died.returncode == 3, died.stderr
    [partial] = copies_in(cache)
    assert partial.startswith(".") and partial.endswith(".tmp"), "a partial copy is never under the copy's name"

    copy = gpt4all_compatible_copy(source, "smollm", cache)
    assert pre_tokenizer_of(copy) == "starcoder" and copy.stat().st_size >= source.stat().st_size
    assert copies_in(cache) == [copy.name], "the dead run's partial file was removed"
    assert gpt4all_compatible_copy(source, "smollm", cache) == copy


def test_gpt4all_copy_removes_partial_copies_left_by_earlier_runs(tmp_path):
    source, cache = write_tiny_gguf(tmp_path / "model.gguf"), tmp_path / "cache"
    folder = cache / "models" / "gpt4all"
    folder.mkdir(parents=True)
    stat = source.stat()
    name = f"model.{stat.st_size}-{stat.st_mtime_ns}.gguf"
    left = [folder / f".{name}.4242.1.tmp", folder / f"model.{stat.st_size}-{stat.st_mtime_ns}.tmp4242"]  # this version's, an earlier one's
    for partial in left:
        partial.write_bytes(b"GGUF")
    copy = gpt4all_compatible_copy(source, "smollm", cache)
    assert copies_in(cache) == [copy.name] == [name] and pre_tokenizer_of(copy) == "starcoder"


def test_gpt4all_copy_interrupted_in_process_leaves_nothing_behind(tmp_path, monkeypatch):
    import gguf

    source, cache = write_tiny_gguf(tmp_path / "model.gguf"), tmp_path / "cache"

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gpt4all_compatible_copy(source, "smollm", cache)
    assert copies_in(cache) == []
    monkeypatch.undo()
    assert pre_tokenizer_of(gpt4all_compatible_copy(source, "smollm", cache)) == "starcoder"


@pytest.mark.integration
def test_gpt4all_compatible_copy_changes_only_the_pre_tokenizer(settings):
    source = default_llm_path()
    copy = gpt4all_compatible_copy(source, "smollm", settings.cache_dir)
    assert copy != source and copy.is_file()
    original, patched = read_gguf_metadata(source), read_gguf_metadata(copy)
    assert (original.pre_tokenizer, patched.pre_tokenizer) == ("smollm", "starcoder")
    assert patched.chat_template == original.chat_template
    assert gpt4all_compatible_copy(source, "smollm", settings.cache_dir) == copy  # cached
