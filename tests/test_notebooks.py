"""The notebooks in notebooks/: stored without outputs, thin over the library, and they run.

Fast tier: the stored files. Integration tier: each notebook executed with nbclient against
the default models, in its own data dir, with short answers (the kernel talks over loopback).
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from tests.conftest import REPO_ROOT

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


def test_the_three_notebooks_are_there():
    assert [path.name for path in NOTEBOOKS] == ["01-quickstart.ipynb", "02-compare-prompts.ipynb", "03-batch-summaries.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs before committing"
        assert "execution" not in cell.metadata


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_uses_the_library_and_defines_no_pipeline_of_its_own(path):
    code = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code")
    assert "import rag" in code
    for forbidden in ("def ", "class ", "langchain", "chromadb", "llama_cpp", "gpt4all"):
        assert forbidden not in code, f"{path.name}: {forbidden!r}: build on rag's API instead"


def execute(path: Path, data_dir: Path) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    env = {
        **os.environ,
        "RAG_DATA_DIR": str(data_dir),
        "RAG_MAX_TOKENS": "32",
        "RAG_K": "2",
        "RAG_TEMPERATURE": "0",
        "RAG_N_THREADS": "1",  # robust on a busy machine
    }
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    client.execute(env=env)  # raises CellExecutionError, with the cell and traceback, when a cell fails
    return notebook


def outputs(notebook: nbformat.NotebookNode) -> tuple[str, set[str]]:
    """All text a notebook printed, and the MIME types it displayed."""
    texts, kinds = [], set()
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            data = output.get("data", {})
            kinds.update(data)
            texts.append(data.get("text/plain", "") + data.get("text/markdown", ""))
    return "".join(texts), kinds


@pytest.mark.integration
def test_quickstart_notebook_runs(tmp_path):
    text, _ = outputs(execute(NOTEBOOKS_DIR / "01-quickstart.ipynb", tmp_path / "rag-data"))
    assert "4 sources" in text and "again: 4 sources unchanged, 0 embedded" in text
    assert "kestrel-point-lighthouse.md" in text and "prompt: chatml/rag" in text


@pytest.mark.integration
def test_compare_prompts_notebook_runs_and_shows_the_chart(tmp_path):
    text, kinds = outputs(execute(NOTEBOOKS_DIR / "02-compare-prompts.ipynb", tmp_path / "rag-data"))
    assert "chatml/rag" in text and "rlm/rag-prompt (generic/rag)" in text and "hit@2" in text
    assert "image/png" in kinds
    assert (tmp_path / "rag-data" / "eval" / "eval.md").is_file()


@pytest.mark.integration
def test_batch_summaries_notebook_runs_and_shows_a_table(tmp_path):
    text, kinds = outputs(execute(NOTEBOOKS_DIR / "03-batch-summaries.ipynb", tmp_path / "rag-data"))
    assert "done: 4 of 4 documents" in text and "reused 4 summaries, 0 LLM calls" in text
    assert "text/markdown" in kinds and "| document | method |" in text
