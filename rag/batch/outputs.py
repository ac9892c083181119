"""A job's results and its output folder: records by key, the manifest, summaries.jsonl, rollup.json and the reports.

Every file is written atomically (a temporary file, then a rename), so a job killed
mid-write leaves the old file or the new one; the temporary files it leaves are
removed when the folder is opened again.

Example::

    outputs = BatchOutputs(Path("out"))
    outputs.cached(key)               # a finished record, or None
    outputs.save(record, spec, content)
    outputs.finish(report)            # summaries.jsonl, rollup.json, report.md, report.json, manifest.json
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rag.atomic import write_atomic
from rag.batch.jobs import RECORD_VERSION, JobSpec
from rag.paths import ensure_directory
from rag.store import utc_timestamp

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
RECORDS_DIR = "records"
SUMMARIES_FILE = "summaries.jsonl"
ROLLUP_FILE = "rollup.json"
REPORT_MD_FILE = "report.md"
REPORT_JSON_FILE = "report.json"
FLUSH_SECONDS = 2.0  # summaries.jsonl and the manifest are rewritten at most this often while a job runs


@dataclass
class BatchFailure:
    """A document (or the rollup) that could not be done, and why."""

    source: str
    stage: str  # "load", "summarize" or "rollup"
    reason: str

    @property
    def display(self) -> str:
        """``source (stage): reason`` on one line, for plain-text output (see :func:`rag.sources.display_form`)."""
        from rag.sources import display_form

        return f"{display_form(self.source)} ({self.stage}): {display_form(self.reason)}"


@dataclass
class BatchReport:
    """What a batch job did. ``records`` are the documents' records, in the order of their sources."""

    out_dir: str
    status: str = "done"  # "done", "partial" (some failed), "failed" (none done) or "interrupted"
    documents: int = 0  # sources found under the inputs, plus inputs that were not found
    summarized: int = 0  # summarized by this run
    reused: int = 0  # unchanged since an earlier run: reused without an LLM call
    failures: list[BatchFailure] = field(default_factory=list)
    rollup: dict | None = None
    records: list[dict] = field(default_factory=list, repr=False)
    model: str = ""
    prompt: str = ""
    workers: int = 1
    seconds: float = 0.0  # wall time of the whole job
    llm_seconds: float = 0.0  # time spent inside LLM calls by this run (all workers together)
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    files: dict[str, str] = field(default_factory=dict)

    @property
    def done(self) -> int:
        """Documents with a summary (made by this run or reused)."""
        return len(self.records)

    @property
    def ok(self) -> bool:
        return self.status == "done"

    def to_dict(self, records: bool = False) -> dict:
        data = {item.name: getattr(self, item.name) for item in dataclasses.fields(self) if records or item.name != "records"}
        data["failures"] = [asdict(failure) for failure in self.failures]
        data["done"] = self.done
        return data


class BatchOutputs:
    """The output folder: records by key, the manifest, and the files made from them."""

    def __init__(self, out_dir: Path):
        self.dir = out_dir
        self.records_dir = ensure_directory(out_dir, "output folder", "choose a folder you can write to for --out") / RECORDS_DIR
        self.records_dir.mkdir(exist_ok=True)
        for folder in (self.dir, self.records_dir):  # left by a process killed mid-write
            for stale in folder.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        self.manifest = self._read_manifest()
        self._flushed = 0.0

    def _read_manifest(self) -> dict:
        path = self.dir / MANIFEST_FILE
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(manifest, dict) and manifest.get("version") == RECORD_VERSION:
                manifest.setdefault("documents", {})
                manifest.setdefault("rollups", {})
                return manifest
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as error:
            logger.warning("ignoring unreadable %s (%s); the records are kept", path, error)
        return {"version": RECORD_VERSION, "documents": {}, "rollups": {}}

    def record_path(self, key: str) -> Path:
        return self.records_dir / f"{key}.json"

    def cached(self, key: str) -> dict | None:
        """The finished record with this key, if there is one."""
        path = self.record_path(key)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            logger.warning("redoing %s: unreadable record (%s)", path, error)
            return None
        return record if isinstance(record, dict) and record.get("key") == key and record.get("summary") else None

    def save(self, record: dict, spec: JobSpec, content: str) -> None:
        """Write a finished record under its key and enter it (with what the key is made of) in the manifest."""
        path = self.record_path(record["key"])
        write_atomic(path, json.dumps(record, ensure_ascii=False, indent=1))
        entry = {
            "record": f"{RECORDS_DIR}/{path.name}",
            "source": record.get("source"),
            **spec.key_parts(content),
            "finished_at": record["timing"]["finished_at"],
        }
        self.manifest["rollups" if record["kind"] == "rollup" else "documents"][record["key"]] = entry

    def flush(self, report: BatchReport, final: bool = False) -> None:
        """Rewrite ``summaries.jsonl`` and the manifest (at most every few seconds unless ``final``)."""
        now = time.monotonic()
        if not final and now - self._flushed < FLUSH_SECONDS:
            return
        self._flushed = now
        lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in report.records)
        write_atomic(self.dir / SUMMARIES_FILE, lines)
        self.manifest["updated_at"] = utc_timestamp()
        write_atomic(self.dir / MANIFEST_FILE, json.dumps(self.manifest, ensure_ascii=False, indent=1))

    def finish(self, report: BatchReport) -> None:
        """Write every file of the finished (or interrupted) job and list them in ``report.files``."""
        report.files = {
            "summaries": str(self.dir / SUMMARIES_FILE),
            "report": str(self.dir / REPORT_MD_FILE),
            "report_json": str(self.dir / REPORT_JSON_FILE),
            "manifest": str(self.dir / MANIFEST_FILE),
        }
        rollup_path = self.dir / ROLLUP_FILE
        if report.rollup is not None:
            write_atomic(rollup_path, json.dumps(report.rollup, ensure_ascii=False, indent=1))
            report.files["rollup"] = str(rollup_path)
        else:
            rollup_path.unlink(missing_ok=True)  # an earlier run's rollup does not describe this one
        self.flush(report, final=True)
        write_atomic(self.dir / REPORT_MD_FILE, render_report(report))
        write_atomic(self.dir / REPORT_JSON_FILE, json.dumps(report.to_dict(), ensure_ascii=False, indent=1))


def render_report(report: BatchReport) -> str:
    """The Markdown report: the corpus rollup first, then each document, then the failures."""
    from rag.sources import display_form  # a file name may hold a newline: keep each entry on its line

    lines = ["# Batch summary", ""]
    counts = f"{report.done} of {report.documents} documents summarized ({report.summarized} this run, {report.reused} reused)"
    if report.failures:
        counts += f", {len(report.failures)} failed"
    lines += [f"{counts}. Model `{report.model}`, prompt `{report.prompt}`, status **{report.status}**.", ""]
    if report.status == "interrupted":
        lines += ["The job was interrupted: run the same command again to finish the remaining documents.", ""]
    lines += ["## Corpus summary", ""]
    if report.rollup is None:
        lines += ["(no rollup: " + ("the job was interrupted" if report.status == "interrupted" else "no document was summarized") + ")", ""]
    else:
        for point in report.rollup["points"]:
            refs = ", ".join(f"[{c['document']}](#doc-{c['document']})" for c in point["citations"])
            lines.append(f"- {point['text']}" + (f" [{refs}]" if refs else " *(no source found)*"))
        lines.append("")
    lines += ["## Documents", ""]
    for number, record in enumerate(report.records, start=1):
        lines += [f'<a id="doc-{number}"></a>', f"### {number}. {display_form(record.get('title') or record['source'])}", ""]
        how = "one prompt" if record["method"] == "stuff" else f"map-reduce, {record['tokens']['calls']} LLM calls"
        lines += [f"`{display_form(record['source'])}`: {record['chunks']} chunks, {how}.", ""]
        for point in record["points"]:
            lines.append(f"- {point['text']}" + (f" ({_chunk_refs(point['citations'])})" if point["citations"] else " *(no source found)*"))
        lines.append("")
    if report.failures:
        lines += ["## Failures", ""]
        lines += [f"- `{display_form(failure.source)}` ({failure.stage}): {display_form(failure.reason)}" for failure in report.failures]
        lines.append("")
    return "\n".join(lines)


def _chunk_refs(citations: list[dict]) -> str:
    refs = []
    for citation in citations:
        ref = f"chunk {citation['chunk']}"
        if citation.get("page") is not None:
            ref += f", p. {citation['page']}"
        refs.append(ref)
    return "; ".join(refs)
