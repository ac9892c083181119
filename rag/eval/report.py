"""The results of ``rag eval`` (:class:`EvalReport`) and their renderings: terminal table, Markdown, JSON, PNG chart.

:func:`rag.eval.run_eval` fills an :class:`EvalReport`; this module only holds and presents it.
The chart draws with matplotlib's Agg canvas directly (no pyplot, no global backend
change), so it works on servers and leaves a notebook's own plotting settings alone.

Example::

    report = run_eval("data/questions.yaml", prompts=["chatml", "rlm/rag-prompt"])
    print(report.to_table())
    files = report.write("eval-out/")   # {"markdown": ..., "json": ..., "chart": ...}
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from rag.settings import Settings

REPORT_MD_FILE = "eval.md"
REPORT_JSON_FILE = "eval.json"
CHART_FILE = "eval.png"


@dataclass
class RetrievalResult:
    """Where a question's expected sources ranked among the chunks retrieved for it."""

    id: str
    expected: list[str]
    retrieved: list[dict]  # {"source", "title", "score"}, best first
    rank: int | None = None  # rank of the first chunk from an expected source; None: not in the top k

    @property
    def hit(self) -> bool:
        return self.rank is not None

    @property
    def reciprocal_rank(self) -> float:
        return 1.0 / self.rank if self.rank else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "hit": self.hit if self.expected else None}


@dataclass
class AnswerResult:
    """One model's answer to one question, scored."""

    id: str
    answer: str = ""
    facts_found: list[str] = field(default_factory=list)
    facts_missing: list[str] = field(default_factory=list)
    fact_recall: float | None = None  # None: an unanswerable question, or one without facts
    grounding: str | None = None  # "citation", "quote" or None (see rag.eval.metrics.grounding)
    dont_know: bool = False
    ttft_s: float | None = None  # seconds from the call to the first token
    tokens: int = 0  # answer tokens, counted with the model's tokenizer
    tokens_per_s: float | None = None  # generation speed after the first token
    seconds: float = 0.0
    context_kept: int = 0  # passages that fitted the model's context
    error: str | None = None


@dataclass
class RunMetrics:
    """One model x prompt's scores (see :mod:`rag.eval.metrics` for the definitions)."""

    questions: int = 0
    hit_at_k: float | None = None
    mrr: float | None = None
    fact_recall: float | None = None
    groundedness: float | None = None
    dont_know_rate: float | None = None  # on unanswerable questions: higher is better
    false_dont_know_rate: float | None = None  # on answerable questions: lower is better
    ttft_s: float | None = None  # median
    tokens_per_s: float | None = None  # median
    failures: int = 0


@dataclass
class RunResult:
    """One model with one prompt, over every question."""

    model: str
    prompt: str  # as asked for ("default": detected from the model)
    prompt_name: str = ""  # as resolved, e.g. chatml/rag
    backend: str = ""
    answers: list[AnswerResult] = field(default_factory=list)
    metrics: RunMetrics = field(default_factory=RunMetrics)
    error: str | None = None  # the model or prompt could not be loaded

    @property
    def label(self) -> str:
        model = self.model[: -len(".gguf")] if self.model.endswith(".gguf") else self.model
        model = os.path.basename(model) or model
        prompt = self.prompt_name or self.prompt
        if self.prompt_name and self.prompt not in ("default", self.prompt_name, self.prompt_name.split("/")[0]):
            prompt = f"{self.prompt} ({self.prompt_name})"
        return f"{model} · {prompt}"


@dataclass
class EvalReport:
    """Everything ``rag eval`` measured: retrieval once, then one :class:`RunResult` per model x prompt."""

    questions_file: str | None
    store: str
    collection: str
    embedder: str
    k: int
    max_tokens: int
    created: str
    questions: list[dict] = field(default_factory=list)
    retrieval: list[RetrievalResult] = field(default_factory=list)
    runs: list[RunResult] = field(default_factory=list)
    ingested: dict | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        return sum(run.metrics.failures for run in self.runs)

    @property
    def status(self) -> str:
        """``"done"``, ``"partial"`` (some answers or runs failed) or ``"failed"`` (no answer at all)."""
        if not self.failures:
            return "done"
        answered = sum(run.metrics.questions - run.metrics.failures for run in self.runs)
        return "partial" if answered else "failed"

    def to_dict(self) -> dict:
        return {
            "questions_file": self.questions_file,
            "store": self.store,
            "collection": self.collection,
            "embedder": self.embedder,
            "k": self.k,
            "max_tokens": self.max_tokens,
            "created": self.created,
            "seconds": self.seconds,
            "status": self.status,
            "ingested": self.ingested,
            "warnings": list(self.warnings),
            "questions": self.questions,
            "retrieval": [result.to_dict() for result in self.retrieval],
            "runs": [
                {
                    "label": run.label,
                    "model": run.model,
                    "prompt": run.prompt,
                    "prompt_name": run.prompt_name,
                    "backend": run.backend,
                    "error": run.error,
                    "metrics": asdict(run.metrics),
                    "answers": [asdict(answer) for answer in run.answers],
                }
                for run in self.runs
            ],
            "files": dict(self.files),
        }

    def to_table(self) -> str:
        """The side-by-side table printed by ``rag eval``."""
        return render_table(self)

    def to_markdown(self, chart: str | None = None) -> str:
        """The Markdown report; ``chart`` is the chart's path relative to the report, if any."""
        return render_markdown(self, chart)

    def plot(self, path: str | os.PathLike | None = None) -> Any:
        """Draw the runs side by side (a matplotlib ``Figure``); also save it as PNG when ``path`` is given."""
        figure = render_chart(self)
        if path is not None:
            figure.savefig(os.fspath(path), dpi=120)
        return figure

    def write(self, out_dir: str | os.PathLike) -> dict[str, str]:
        """Write ``eval.md``, ``eval.json`` and ``eval.png`` into ``out_dir``; return their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.files = {"markdown": str(out / REPORT_MD_FILE), "json": str(out / REPORT_JSON_FILE), "chart": str(out / CHART_FILE)}
        self.plot(out / CHART_FILE)
        (out / REPORT_MD_FILE).write_text(self.to_markdown(chart=CHART_FILE), encoding="utf-8")
        (out / REPORT_JSON_FILE).write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return dict(self.files)


def default_out_dir(settings: Settings) -> Path:
    """Where ``rag eval`` writes its report when no ``--out`` is given: ``DATA_DIR/evals/TIMESTAMP``."""
    return settings.data_dir / "evals" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")


# --- terminal table and Markdown ----------------------------------------------------------------------

COLUMNS = ["model · prompt", "hit@{k}", "MRR", "facts", "grounded", "don't know", "TTFT s", "tok/s", "failed"]


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rows(report: EvalReport) -> list[list[str]]:
    rows = []
    for run in report.runs:
        metrics = run.metrics
        rows.append(
            [
                run.label,
                _number(metrics.hit_at_k),
                _number(metrics.mrr),
                _number(metrics.fact_recall),
                _number(metrics.groundedness),
                _number(metrics.dont_know_rate),
                _number(metrics.ttft_s),
                _number(metrics.tokens_per_s, 1),
                f"{metrics.failures}/{metrics.questions}" if metrics.failures else "0",
            ]
        )
    return rows


def render_table(report: EvalReport) -> str:
    header = [column.format(k=report.k) for column in COLUMNS]
    rows = _rows(report)
    widths = [max(len(row[index]) for row in [header, *rows]) for index in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) if index == 0 else cell.rjust(width) for index, (cell, width) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * width for width in widths]), *(line(row) for row in rows)])


def _md_cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render_markdown(report: EvalReport, chart: str | None = None) -> str:
    answerable = sum(1 for question in report.questions if question["answerable"])
    lines = [
        "# rag eval",
        "",
        f"{len(report.questions)} questions ({answerable} answerable, {len(report.questions) - answerable} with no answer in the corpus)"
        + (f" from `{report.questions_file}`" if report.questions_file else "")
        + f"; collection `{report.collection}` in `{report.store}`, embedder `{report.embedder}`, k = {report.k},"
        f" answers up to {report.max_tokens} tokens. {report.created}, {report.seconds:.1f} s.",
        "",
    ]
    for warning in report.warnings:
        lines.append(f"> **Warning**: {warning}")
    if report.warnings:
        lines.append("")
    header = [column.format(k=report.k) for column in COLUMNS]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in _rows(report)]
    lines += [
        "",
        f"Retrieval (hit@{report.k}, MRR) is computed once and shared by every run. *facts*: share of expected facts in the"
        " answers; *grounded*: share of answers to answerable questions that cite a passage they were given ([n]) or quote"
        " it; *don't know*: share of unanswerable questions the model declined; TTFT and tok/s are medians.",
        "",
    ]
    if chart:
        lines += [f"![runs side by side]({chart})", ""]
    failed_runs = [run for run in report.runs if run.error]
    if failed_runs:
        lines += ["## Runs that could not start", ""]
        lines += [f"- **{_md_cell(run.label)}**: {_md_cell(run.error)}" for run in failed_runs]
        lines.append("")
    lines += ["## Retrieval", "", "| question | expected | rank | retrieved (score) |", "|---|---|---:|---|"]
    for question, result in zip(report.questions, report.retrieval):
        retrieved = "; ".join(f"{Path(item['source']).name or item['source']} ({item['score']:.2f})" for item in result.retrieved)
        rank = "-" if not result.expected else (str(result.rank) if result.rank else "miss")
        lines.append(f"| {_md_cell(question['question'])} | {_md_cell(', '.join(result.expected) or '-')} | {rank} | {_md_cell(retrieved)} |")
    lines.append("")
    lines += ["## Answers", ""]
    runs = [run for run in report.runs if not run.error]
    for question in report.questions:
        expected = "no answer in the corpus" if not question["answerable"] else _facts_text(question["facts"])
        lines += [f"### {_md_cell(question['question'])}", "", f"`{question['id']}`; expected: {expected}", ""]
        lines += ["| run | answer | facts | grounded | don't know |", "|---|---|---|---|---|"]
        for run in runs:
            answer = next((item for item in run.answers if item.id == question["id"]), None)
            if answer is None:
                continue
            if answer.error:
                lines.append(f"| {_md_cell(run.label)} | **failed**: {_md_cell(answer.error)} | | | |")
                continue
            facts = "-" if answer.fact_recall is None else f"{len(answer.facts_found)}/{len(answer.facts_found) + len(answer.facts_missing)}"
            lines.append(
                f"| {_md_cell(run.label)} | {_md_cell(answer.answer) or '*(empty)*'} | {facts} | {answer.grounding or 'no'} |"
                f" {'yes' if answer.dont_know else 'no'} |"
            )
        lines.append("")
    return "\n".join(lines)


def _facts_text(facts: dict) -> str:
    parts = [f"`{fact}`" for fact in facts["all_of"]]
    if facts["any_of"]:
        parts.append("one of " + " / ".join(f"`{fact}`" for fact in facts["any_of"]))
    return ", ".join(parts) or "the expected sources"


# --- chart ---------------------------------------------------------------------------------------------

QUALITY = [
    ("hit_at_k", "hit@k"),
    ("mrr", "MRR"),
    ("fact_recall", "fact recall"),
    ("groundedness", "grounded"),
    ("dont_know_rate", "don't know\n(unanswerable)"),
]


def render_chart(report: EvalReport) -> Any:
    """Quality scores as grouped bars (one colour per run), then time to first token and tokens/s."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = report.runs
    colours = [f"C{index % 10}" for index in range(len(runs))]
    figure = Figure(figsize=(12, 4.8 + 0.25 * len(runs)), layout="constrained")
    FigureCanvasAgg(figure)
    quality, latency, speed = figure.subplots(1, 3, width_ratios=[3.2, 1, 1])

    width = 0.8 / max(1, len(runs))
    for index, (run, colour) in enumerate(zip(runs, colours)):
        offsets = [position - 0.4 + width * (index + 0.5) for position in range(len(QUALITY))]
        values = [getattr(run.metrics, key) for key, _ in QUALITY]
        bars = quality.bar(offsets, [value or 0.0 for value in values], width, color=colour, label=_legend_label(index, run))
        for bar, value in zip(bars, values):
            text = "n/a" if value is None else f"{value:.2f}"
            quality.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    quality.set_xticks(range(len(QUALITY)), [label.replace("hit@k", f"hit@{report.k}") for _, label in QUALITY])
    quality.set_ylim(0, 1.12)
    quality.set_ylabel("score (higher is better)")
    quality.set_title("answer and retrieval quality")
    quality.grid(axis="y", alpha=0.3)

    labels = [str(index + 1) for index in range(len(runs))]
    for axis, key, title in (
        (latency, "ttft_s", "time to first token, s\n(lower is better)"),
        (speed, "tokens_per_s", "tokens per second\n(higher is better)"),
    ):
        values = [getattr(run.metrics, key) for run in runs]
        bars = axis.bar(labels, [value or 0.0 for value in values], color=colours)
        for bar, value in zip(bars, values):
            text = "n/a" if value is None else (f"{value:.2f}" if key == "ttft_s" else f"{value:.0f}")
            axis.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("run")
        axis.margins(y=0.15)
        axis.grid(axis="y", alpha=0.3)

    handles, names = quality.get_legend_handles_labels()
    figure.legend(handles, names, loc="outside lower center", ncols=1 if len(runs) > 3 else max(1, len(runs)), fontsize=9, frameon=False)
    source = Path(report.questions_file).name if report.questions_file else "questions"
    figure.suptitle(f"rag eval: {source}, {len(report.questions)} questions, k = {report.k}")
    return figure


def _legend_label(index: int, run: RunResult) -> str:
    failed = run.metrics.failures
    text = f"{index + 1}. {run.label}"
    if run.error:
        text += " (could not run)"
    elif failed:
        text += f" ({failed} failed)"
    return text
