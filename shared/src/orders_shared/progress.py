"""Saying on stderr what a long wait waits for: the one place every client wait reports.

A wait (:func:`waiting`) that lasts longer than :data:`REPORT_AFTER` seconds
says, in one line, what it waits for, how long it has waited and how long it
still will (``orders: waiting for Vault at http://127.0.0.1:8200 (last try: no
answer): 6 s so far, gives up in 54 s``).

On a terminal that line is redrawn in place every second and erased when
the wait ends (so the final message stands alone); into a pipe or a log, and on a
terminal that cannot redraw (``TERM=dumb``, as CI logs and editors' shells set it), it
is a plain line every :data:`PLAIN_EVERY` seconds. A stderr that can no longer be
written (its reader went away) ends the reporting, never the wait. Only the innermost running wait
is shown. Nothing is said unless a program installed a :class:`WaitReporter`
(the ``orders`` CLI does): as a library the client stays silent.

A line names a service, an address, an order id or a task queue, the type of
the last failure and times: never a token, a credential or order data.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import TextIO

REPORT_AFTER = 2.0
"""A wait shorter than this says nothing."""
TTY_EVERY = 1.0
"""How often the in-place line is redrawn on a terminal."""
PLAIN_EVERY = 5.0
"""How often a plain progress line is written when stderr is not a terminal."""
ENDING = 0.5
"""A wait whose limit is this close is not announced (its final message follows at once)."""


class Wait:
    """One running wait: what for, since when, until when (``left()``, else no limit)."""

    def __init__(
        self,
        what: str,
        left: Callable[[], float] | None,
        *,
        no_limit: str = "no time limit",
        tty_only: bool = False,
    ) -> None:
        self.what = what
        self.left = left
        self.no_limit = no_limit
        self.tty_only = tty_only
        self.started = time.monotonic()
        self.cause: str | None = None  # the last failure's short name, once there was one

    def line(self, left: float | None = None) -> str:
        """``left``: the seconds to go as the caller measured them (else ``left()`` now);
        rounded up, so a wait that still goes on never says "gives up in 0 s"."""
        waited = time.monotonic() - self.started
        cause = f" (last try: {self.cause})" if self.cause else ""
        if self.left is None:
            limit = self.no_limit
        else:
            togo = self.left() if left is None else left
            limit = f"gives up in {math.ceil(max(0.0, togo)):.0f} s"
        return f"waiting for {self.what}{cause}: {waited:.0f} s so far, {limit}"


class WaitReporter:
    """Writes the progress of the innermost running :class:`Wait` to ``stream``."""

    def __init__(
        self,
        prefix: str,
        stream: TextIO | None = None,
        *,
        after: float = REPORT_AFTER,
        every: float | None = None,
    ) -> None:
        self.prefix = prefix
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _can_redraw(self.stream)
        self.after = after
        self.every = every if every is not None else (TTY_EVERY if self.tty else PLAIN_EVERY)
        self._running: list[Wait] = []
        self._drawn = False  # an in-place line is on the terminal
        self._broken = False  # the stream refused a write: say nothing more

    def install(self) -> None:
        """Report every :func:`waiting` of this context (and the tasks it starts)."""
        _reporter.set(self)

    def _write(self, text: str) -> None:
        """Progress is a courtesy: a closed or full stderr ends it, not the wait."""
        if self._broken:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe or file
            self._broken = True

    def _show(self, wait: Wait, left: float | None) -> None:
        if self.tty:
            self._write(f"\r{self.prefix}: {wait.line(left)}\033[K")
            self._drawn = True
        else:
            self._write(f"{self.prefix}: {wait.line(left)}\n")

    def _clear(self) -> None:
        if self._drawn:
            self._write("\r\033[K")
            self._drawn = False

    async def _tick(self, wait: Wait) -> None:
        await asyncio.sleep(self.after)
        while True:
            innermost = self._running and self._running[-1] is wait
            left = wait.left() if wait.left is not None else None
            ending = left is not None and left <= ENDING
            if innermost and not ending and (self.tty or not wait.tty_only):
                self._show(wait, left)
            await asyncio.sleep(self.every)


def _can_redraw(stream: TextIO) -> bool:
    """A terminal that understands ``\\r`` and ``ESC [K`` (not ``TERM=dumb``)."""
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # no stream, or a closed one
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


_reporter: ContextVar[WaitReporter | None] = ContextVar("orders_wait_reporter", default=None)


@contextlib.asynccontextmanager
async def waiting(
    what: str,
    left: Callable[[], float] | None = None,
    *,
    no_limit: str = "no time limit",
    tty_only: bool = False,
) -> AsyncIterator[Wait]:
    """Report this wait if it lasts (see the module's docstring). ``what`` names what
    is waited for, ``left()`` the seconds until it gives up (None: no limit, said as
    ``no_limit``). ``tty_only``: say it on a terminal only (a short, bounded check whose
    end is reported anyway); it still hides outer waits while it runs. Set
    ``wait.cause`` to the last failure's short name as it changes."""
    wait = Wait(what, left, no_limit=no_limit, tty_only=tty_only)
    reporter = _reporter.get()
    if reporter is None:
        yield wait
        return
    reporter._running.append(wait)
    ticker = asyncio.create_task(reporter._tick(wait))
    try:
        yield wait
    finally:
        ticker.cancel()  # it only sleeps between writes: cancelled, it writes nothing more
        reporter._running.remove(wait)
        reporter._clear()
