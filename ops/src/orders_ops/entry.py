"""Console-script entry points for the commands that open a Temporal client and then exit.

temporalio's Rust core keeps Tokio threads that call back into Python; when the
interpreter tears itself down after ``main()`` returns, one of them can meet a
finalising interpreter and the process dies with SIGSEGV or SIGABRT although the
command did its work (temporalio/sdk-python#300; seen here: ``orders-bootstrap
temporal`` printed its result and exited -11 in one full test run). These entries run
the command's ``main()`` as usual (its ``finally`` blocks included), flush stdout and
stderr, and end the process with ``os._exit`` and main's own exit code, so nothing runs
after the work is done. ``main()`` itself stays importable and callable in-process
(the tests call it), only the installed command skips the teardown.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn


def _code(exc: SystemExit) -> int:
    """The exit status Python gives ``SystemExit(exc.code)``, printing a message code."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def run(main: Callable[[], None]) -> NoReturn:
    """``main()``, then exit with its status and no interpreter teardown."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = _code(exc)
    except KeyboardInterrupt:
        code = 130
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: what was written is all there is
            pass
    os._exit(code)


def bootstrap() -> NoReturn:
    """``orders-bootstrap``: it adds the search attributes through a Temporal client."""
    from orders_ops.bootstrap import main

    run(main)


def stack() -> NoReturn:
    """``orders-stack``: ``up`` runs the bootstrap in-process."""
    from orders_ops.stack import main

    run(main)
