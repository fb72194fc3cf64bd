"""Ctrl-C in a console script: one line on stderr and exit code 130, not a traceback
(``asyncio.run`` turns it into a chained ``CancelledError ... KeyboardInterrupt``). The
script's own ``finally`` blocks have run (its clean-up) before this catches it."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec

P = ParamSpec("P")

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def one_line_on_interrupt(prog: str) -> Callable[[Callable[P, None]], Callable[P, None]]:
    def wrap(main: Callable[P, None]) -> Callable[P, None]:
        @functools.wraps(main)
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                main(*args, **kwargs)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted (Ctrl-C)", file=sys.stderr)
                sys.exit(EXIT_INTERRUPTED)

        return run

    return wrap
