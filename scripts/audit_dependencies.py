"""Audit the installed environment for known advisories (pip-audit), accepting only the ones listed as not reaching rag.

    .venv/bin/python scripts/audit_dependencies.py                 # audit this interpreter's environment
    .venv/bin/python scripts/audit_dependencies.py --report R.json # judge a saved `pip-audit -f json` report

Exit status 0: nothing but accepted advisories, or the audit was skipped because the advisory
service (PyPI's JSON API) cannot be reached or answers for no package, as a registry mirror may
(a ``skipped: <reason>`` line says so: never silently).
Exit status 1: an advisory that ``scripts/known_advisories.toml`` does not list, a listed one
that now has a fixed release (upgrade, then remove it from the list), or pip-audit failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

KNOWN_ADVISORIES = Path(__file__).resolve().with_name("known_advisories.toml")
ADVISORY_SERVICE = "https://pypi.org/pypi/pip/json"  # what pip-audit's default service (PyPI's JSON API) answers
AUDIT_TIMEOUT_SECONDS = 600
NETWORK_ERRORS = (
    "ConnectionError",
    "Max retries exceeded",
    "NameResolutionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeout",
    "ReadTimeout",
    "timed out",
)


class AuditFailed(Exception):
    """pip-audit could not audit the environment for a reason other than the network."""


class ServiceUnreachable(Exception):
    """The advisory service cannot be reached from this machine: the audit is skipped."""


@dataclass(frozen=True)
class KnownAdvisory:
    """An advisory accepted because it does not reach rag's use, while no fixed release exists."""

    id: str
    package: str
    reason: str


@dataclass(frozen=True)
class Finding:
    """One advisory pip-audit reports against one installed package."""

    package: str
    version: str
    id: str
    aliases: tuple[str, ...] = ()
    fix_versions: tuple[str, ...] = ()

    @property
    def names(self) -> set[str]:
        return {self.id, *self.aliases}

    def describe(self) -> str:
        aliases = f" ({', '.join(self.aliases)})" if self.aliases else ""
        return f"{self.package} {self.version}: {self.id}{aliases}"


@dataclass
class Verdict:
    """The findings sorted by what they mean for the build."""

    accepted: list[tuple[Finding, KnownAdvisory]] = field(default_factory=list)
    new: list[Finding] = field(default_factory=list)
    now_fixed: list[tuple[Finding, KnownAdvisory]] = field(default_factory=list)
    stale: list[KnownAdvisory] = field(default_factory=list)
    not_audited: list[tuple[str, str]] = field(default_factory=list)  # (package, why pip-audit skipped it)

    @property
    def ok(self) -> bool:
        return not self.new and not self.now_fixed


def canonical(name: str) -> str:
    """A package name as PEP 503 compares them."""
    return "-".join(name.lower().replace("_", "-").replace(".", "-").split("-"))


def load_known(path: Path = KNOWN_ADVISORIES) -> list[KnownAdvisory]:
    """The accepted advisories of ``path`` (``[[advisory]]`` tables with ``id``, ``package`` and ``reason``)."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    known = []
    for index, entry in enumerate(data.get("advisory", [])):
        missing = [key for key in ("id", "package", "reason") if not str(entry.get(key, "")).strip()]
        if missing:
            raise ValueError(f"{path}: advisory #{index + 1} needs {', '.join(missing)}")
        known.append(KnownAdvisory(entry["id"].strip(), canonical(entry["package"]), " ".join(entry["reason"].split())))
    return known


def parse_report(report: dict) -> tuple[list[Finding], list[tuple[str, str]]]:
    """The findings of a ``pip-audit --format json`` report, and the packages it could not audit."""
    findings: list[Finding] = []
    skipped: list[tuple[str, str]] = []
    for dependency in report.get("dependencies", []):
        name = canonical(dependency["name"])
        if "skip_reason" in dependency:
            skipped.append((name, dependency["skip_reason"]))
            continue
        for vuln in dependency.get("vulns", []):
            findings.append(
                Finding(name, dependency.get("version", "?"), vuln["id"], tuple(vuln.get("aliases", [])), tuple(vuln.get("fix_versions", [])))
            )
    return findings, skipped


def judge(findings: Iterable[Finding], known: list[KnownAdvisory], not_audited: list[tuple[str, str]] = ()) -> Verdict:
    """Sort ``findings`` against the accepted ``known`` advisories (matched by package and by id or alias)."""
    verdict = Verdict(not_audited=list(not_audited))
    matched: set[KnownAdvisory] = set()
    for finding in findings:
        entry = next((entry for entry in known if entry.package == finding.package and entry.id in finding.names), None)
        if entry is None:
            verdict.new.append(finding)
            continue
        matched.add(entry)
        (verdict.now_fixed if finding.fix_versions else verdict.accepted).append((finding, entry))
    verdict.stale = [entry for entry in known if entry not in matched]
    return verdict


def report_lines(verdict: Verdict) -> list[str]:
    """What the audit prints: one line per finding, then the result."""
    lines = [f"known, accepted: {finding.describe()}: {entry.reason}" for finding, entry in verdict.accepted]
    lines += [
        f"FIXED RELEASE: {finding.describe()} is fixed in {', '.join(finding.fix_versions)}: upgrade {finding.package}, "
        f"then remove {entry.id} from scripts/known_advisories.toml"
        for finding, entry in verdict.now_fixed
    ]
    fixes = lambda finding: f"fixed in {', '.join(finding.fix_versions)}" if finding.fix_versions else "no fixed release"  # noqa: E731
    lines += [
        f"NEW ADVISORY: {finding.describe()} ({fixes(finding)}): upgrade, or if it cannot reach rag's use, "
        "list it in scripts/known_advisories.toml with the reason"
        for finding in verdict.new
    ]
    lines += [f"no longer reported: {entry.id} ({entry.package}): remove it from scripts/known_advisories.toml" for entry in verdict.stale]
    if verdict.not_audited:
        named = ", ".join(f"{package} ({why})" for package, why in verdict.not_audited[:5])
        more = f" and {len(verdict.not_audited) - 5} more" if len(verdict.not_audited) > 5 else ""
        lines.append(f"not audited: {named}{more}")
    problems = len(verdict.new) + len(verdict.now_fixed)
    lines.append(
        f"audit: {'FAILED' if problems else 'ok'}: {len(verdict.new)} new, {len(verdict.now_fixed)} now fixed, "
        f"{len(verdict.accepted)} known and accepted"
    )
    return lines


def check_service(url: str = ADVISORY_SERVICE, timeout: float = 10.0) -> None:
    """Raise :class:`ServiceUnreachable` when the advisory service does not answer (proxies in the environment are used)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (a fixed https URL)
            response.read(1)
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        reason = getattr(error, "reason", error)
        raise ServiceUnreachable(f"the advisory service {url} cannot be reached: {reason}") from None


def run_pip_audit(python: str = sys.executable, timeout: float = AUDIT_TIMEOUT_SECONDS) -> dict:
    """``pip-audit --format json`` over the environment of ``python`` (editable installs, rag itself, left out)."""
    command = [python, "-m", "pip_audit", "--format", "json", "--skip-editable", "--progress-spinner", "off", "--aliases", "on", "--desc", "off"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ServiceUnreachable(f"pip-audit did not finish in {timeout:g} s (the advisory service is slow or unreachable)") from None
    if "No module named pip_audit" in done.stderr:
        raise AuditFailed(f"pip-audit is not installed in {python}: pip install -e '.[test]'")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        pass
    error = " ".join(done.stderr.split())[-500:] or f"exit status {done.returncode} and no report"
    if any(marker in done.stderr for marker in NETWORK_ERRORS):
        raise ServiceUnreachable(f"pip-audit could not reach the advisory service: {error}")
    raise AuditFailed(f"pip-audit failed: {error}")


def main(
    argv: list[str] | None = None,
    *,
    audit: Callable[[], dict] = run_pip_audit,
    reach_service: Callable[[], None] = check_service,
    echo: Callable[[str], None] = print,
) -> int:
    """Run the audit and print its lines; the exit status (0 ok or skipped, 1 failed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, help="a saved `pip-audit --format json` report to judge instead of running pip-audit")
    parser.add_argument("--known", type=Path, default=KNOWN_ADVISORIES, help="the accepted advisories [default: scripts/known_advisories.toml]")
    args = parser.parse_args(argv)
    known = load_known(args.known)
    try:
        if args.report:
            report = json.loads(args.report.read_text(encoding="utf-8"))
        else:
            reach_service()
            report = audit()
    except ServiceUnreachable as why:
        echo(f"skipped: dependency audit not run: {why}")
        return 0
    except AuditFailed as why:
        echo(f"audit: FAILED: {why}")
        return 1
    findings, not_audited = parse_report(report)
    audited = len(report.get("dependencies", [])) - len(not_audited)
    if not audited:  # a registry mirror without PyPI's per-version JSON answers "not found" for every package
        why = not_audited[0][1] if not_audited else "no packages listed"
        echo(f"skipped: dependency audit not run: the advisory service answered for none of the {len(not_audited)} packages (first: {why})")
        return 0
    verdict = judge(findings, known, not_audited)
    for line in report_lines(verdict):
        echo(line)
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
