"""Our own logic of :mod:`orders_shared.progress` (the real outage runs are in
ops/tests/test_cli_progress.py): no "gives up in 0 s" while a wait goes on, a stderr
whose reader went away ends the reporting and not the wait, and ``TERM=dumb``
(or no terminal) gets plain lines."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import time

import pytest

from orders_shared import progress
from orders_shared.progress import Wait, WaitReporter, waiting


def test_a_wait_that_goes_on_never_says_it_gives_up_in_0_s() -> None:
    wait = Wait("Vault at http://127.0.0.1:8200", lambda: 0.6)
    assert wait.line().endswith("gives up in 1 s")
    assert wait.line(0.01).endswith("gives up in 1 s")
    assert wait.line(4.2).endswith("gives up in 5 s")


class _Closed(io.StringIO):
    def isatty(self) -> bool:
        return True

    def write(self, _text: str) -> int:
        raise BrokenPipeError("the reader went away")


def test_a_stderr_that_cannot_be_written_ends_the_reporting_not_the_wait(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TERM", "xterm")
    stream = _Closed()

    reporter = WaitReporter("orders", stream, after=0.05, every=0.05)

    async def main() -> str:
        reporter.install()
        until = time.monotonic() + 5
        async with waiting("Temporal at 127.0.0.1:7233", lambda: until - time.monotonic()):
            await asyncio.sleep(0.3)  # several draws, each refused
        return "done"

    caplog.set_level(logging.ERROR, logger="asyncio")
    assert asyncio.run(main()) == "done"
    gc.collect()  # a ticker task that died of the write would be reported here
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()], caplog.text
    assert reporter._broken  # it noticed, and stopped writing


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("term", "redraws"), [("xterm-256color", True), ("dumb", False)])
def test_term_dumb_gets_plain_lines(
    monkeypatch: pytest.MonkeyPatch, term: str, redraws: bool
) -> None:
    monkeypatch.setenv("TERM", term)
    stream = _Terminal()
    reporter = WaitReporter("orders", stream)
    assert reporter.tty is redraws
    assert reporter.every == (progress.TTY_EVERY if redraws else progress.PLAIN_EVERY)
