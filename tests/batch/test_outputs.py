"""The output folder and the report (rag.batch.outputs): cited summaries, the rollup, the manifest, report.md."""

from __future__ import annotations

import json
from pathlib import Path

from rag.batch import BatchReport, render_report, summarize_batch
from tests.batch.fakes import TOPICS, fake_local, no_temporaries, read_jsonl


def test_each_document_gets_a_cited_summary_and_the_rollup_cites_documents(corpus, tmp_path, batch_settings):
    out = tmp_path / "out"
    report = summarize_batch([corpus], out, batch_settings, local_llm=fake_local())

    assert report.status == "done" and report.summarized == 3 and report.done == 3 and not report.failures
    records = read_jsonl(out / "summaries.jsonl")
    assert [Path(record["source"]).name for record in records] == sorted(TOPICS)
    for record in records:
        assert {"source", "content_hash", "model", "prompt", "summary", "points", "citations", "timing", "tokens", "key"} <= record.keys()
        assert record["model"] == "fake-model.gguf" and record["prompt"] == "chatml/summarize"
        assert record["tokens"]["calls"] == 1 and record["tokens"]["prompt"] > 0 and record["tokens"]["completion"] > 0
        assert record["points"] and all(point["citations"] for point in record["points"])
        for point in record["points"]:
            for citation in point["citations"]:
                assert citation["source"] == record["source"]
                assert 0 <= citation["chunk"] < record["chunks"] and citation["start_index"] is not None
        assert "[" not in " ".join(point["text"] for point in record["points"])  # markers became data

    rollup = json.loads((out / "rollup.json").read_text())
    cited = {citation["document"] for point in rollup["points"] for citation in point["citations"]}
    assert cited and cited <= {1, 2, 3}
    assert all(rollup["documents"][c["document"] - 1]["source"] == c["source"] for p in rollup["points"] for c in p["citations"])

    markdown = (out / "report.md").read_text()
    assert markdown.index("## Corpus summary") < markdown.index("## Documents") < markdown.index("Kestrel Point Lighthouse")
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["documents"]) == {record["key"] for record in records}
    entry = manifest["documents"][records[0]["key"]]
    assert {"content_hash", "model", "prompt", "settings"} <= entry.keys() and (out / entry["record"]).is_file()
    assert json.loads((out / "report.json").read_text())["status"] == "done"
    assert no_temporaries(out)


def test_report_lists_uncited_points_as_such():
    record = {"source": "/a.md", "title": "A", "chunks": 1, "method": "stuff", "tokens": {"calls": 1},
              "points": [{"text": "Made up.", "citations": [], "supported": False}]}  # fmt: skip
    text = render_report(BatchReport(out_dir="x", documents=1, records=[record]))
    assert "Made up. *(no source found)*" in text
