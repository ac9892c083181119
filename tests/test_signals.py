"""SIGTERM stops a command like Ctrl-C (rag.signals): the handler, the exit statuses, the CLI's mapping."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from click.testing import CliRunner

from rag.batch import BatchInterrupted
from rag.batch.outputs import BatchReport
from rag.cli import cli
from rag.signals import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, exit_status, stop_on_sigterm


@pytest.fixture
def restore_sigterm():
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_raises_terminated_in_the_main_thread(restore_sigterm):
    stop_on_sigterm()
    with pytest.raises(Terminated) as stopped:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at the next bytecode; never reached
    assert isinstance(stopped.value, KeyboardInterrupt)  # every Ctrl-C clean-up runs for it too


def test_sigterm_ignored_before_stays_ignored_and_other_threads_install_nothing(restore_sigterm):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop_on_sigterm()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    thread = threading.Thread(target=stop_on_sigterm)
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_exit_status_tells_sigterm_from_ctrl_c_also_through_a_batch_interruption():
    assert (EXIT_INTERRUPTED, EXIT_TERMINATED) == (130, 143)
    assert exit_status(KeyboardInterrupt()) == 130
    assert exit_status(Terminated()) == 143
    for cause, status in ((Terminated(), 143), (KeyboardInterrupt(), 130)):
        try:
            raise BatchInterrupted(BatchReport(out_dir="out")) from cause
        except BatchInterrupted as interrupted:
            assert exit_status(interrupted) == status


@pytest.mark.parametrize(("raised", "status"), [(KeyboardInterrupt, 130), (Terminated, 143)])
def test_the_cli_exits_130_after_ctrl_c_and_143_after_sigterm(monkeypatch, tmp_path, raised, status):
    def stopped(*args, **kwargs):
        raise raised

    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path))
    monkeypatch.setattr("rag.indexing.ingest", stopped)
    result = CliRunner().invoke(cli, ["ingest", str(tmp_path)])
    assert result.exit_code == status and result.stderr.strip() == "interrupted"
