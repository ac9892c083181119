"""A non-editable install carries the prompts and the sample data."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from tests.conftest import REPO_ROOT


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
