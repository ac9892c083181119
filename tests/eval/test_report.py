"""rag.eval.report: an EvalReport as terminal table, Markdown, JSON and PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.eval import run_eval
from tests.eval.conftest import GOOD, WEAK, fake_factory


@pytest.mark.integration  # renders a matplotlib chart (about a second): kept out of the fast tier
def test_report_renders_table_markdown_json_and_chart(settings, question_file, fake_embeddings, tmp_path):
    report = run_eval(question_file, settings, models=["default", "weak"], embeddings=fake_embeddings, llm_factory=fake_factory({"default": GOOD, "weak": WEAK}))

    table = report.to_table().splitlines()
    assert table[0].split()[:3] == ["model", "·", "prompt"] and "hit@4" in table[0] and "don't know" in table[0]
    assert len(table) == 2 + 2 and "default · chatml/rag" in table[2] and table[3].rstrip().endswith("1/3")

    files = report.write(tmp_path / "out")
    markdown = Path(files["markdown"]).read_text(encoding="utf-8")
    assert "![runs side by side](eval.png)" in markdown and "## Retrieval" in markdown and "**failed**: server fell over" in markdown
    assert "no answer in the corpus" in markdown
    data = json.loads(Path(files["json"]).read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(report.to_dict()))
    assert [run["label"] for run in data["runs"]] == ["default · chatml/rag", "weak · chatml/rag"]
    assert data["runs"][1]["answers"][1]["error"] and data["retrieval"][2]["hit"] is None
    assert Path(files["chart"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
