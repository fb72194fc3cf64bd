"""``orders`` never waits in silence: a wait over 2 s says on stderr what it waits for.

Against the real stack: Vault is paused with SIGSTOP (by the PID in this stack's
own pid file; it accepts connections and answers nothing) or Temporal is looked
for on a closed port, and ``orders status`` runs as its own process. Its stderr
must show, while it still waits (the line says how long it will go on), what it
waits for, then the final one-line error; into a pipe plain lines, on a terminal
one line redrawn in place and erased before the final message, on a terminal that
cannot redraw (``TERM=dumb``) plain lines.

The closed port is held by this test (bound, never listening: a connect is refused at
once), so no other process, such as a second stack another test starts on free ports,
can take it during the wait. The terminal's ``TERM`` is set, not inherited: a CI shell
may run with ``TERM=dumb`` or none.
"""

from __future__ import annotations

import os
import pty
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from cli_support import ORDERS, cli_env  # ops/tests is on pytest's pythonpath

from orders_ops.stack import Stack

DEADLINE = 10
PROGRESS = re.compile(
    r"^orders: waiting for (?P<what>.+?)(?: \(last try: (?P<cause>[^)]+)\))?: "
    r"(?P<waited>\d+) s so far, gives up in (?P<left>\d+) s$"
)


@contextmanager
def vault_paused(stack: Stack) -> Iterator[None]:
    pid = stack.vault.pid()
    assert pid is not None, "this stack's Vault does not run"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port nobody listens on and nobody else can take while it is held."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))  # bound, not listening: connects are refused
        yield held.getsockname()[1]


@contextmanager
def outage(stack: Stack, down: str) -> Iterator[tuple[dict[str, str], str]]:
    """``(environment of the CLI, what its progress must name)`` during the outage."""
    if down == "vault-paused":
        with vault_paused(stack):
            yield {"VAULT_REQUEST_TIMEOUT": "1"}, f"Vault at {stack.settings.vault_addr}"
    else:
        with closed_port() as port:
            yield {"ORDERS_TEMPORAL_PORT": str(port)}, f"Temporal at 127.0.0.1:{port}"


def client_token(stack: Stack) -> str:
    return stack.settings.token_file("client").read_text().strip()


@pytest.mark.parametrize("down", ["vault-paused", "temporal-closed-port"])
def test_status_says_what_it_waits_for_while_it_waits_into_a_pipe(stack: Stack, down: str) -> None:
    with outage(stack, down) as (extra, what):
        proc = subprocess.run(
            [*ORDERS, "status", "progress-order"],
            env=cli_env(stack, ORDERS_CLIENT_DEADLINE=str(DEADLINE), **extra),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    err = proc.stderr
    assert proc.returncode == 1, err
    *progress, final = err.strip().splitlines()
    assert progress, f"no progress line during a {DEADLINE} s wait: {err!r}"
    for line in progress:
        shown = PROGRESS.match(line)
        assert shown is not None, f"not a progress line: {line!r}"
        assert shown["what"] == what
        # said while waiting: the wait had more to go when the line was written
        assert 0 < int(shown["left"]) <= DEADLINE, line
    assert final.startswith(f"orders: error: {what} did not answer within {DEADLINE} s"), err
    assert "\r" not in err and "\033" not in err  # a pipe gets plain lines
    assert client_token(stack) not in err and "Traceback" not in err


def on_a_terminal(stack: Stack, term: str) -> str:
    """What ``orders status`` writes to a terminal (its stderr) while Vault is paused."""
    primary, secondary = pty.openpty()
    try:
        with vault_paused(stack):
            proc = subprocess.Popen(
                [*ORDERS, "status", "progress-order"],
                env=cli_env(
                    stack, ORDERS_CLIENT_DEADLINE="6", VAULT_REQUEST_TIMEOUT="1", TERM=term
                ),
                stdout=subprocess.DEVNULL,
                stderr=secondary,
            )
            os.close(secondary)
            secondary = -1
            seen = b""
            while True:
                try:
                    chunk = os.read(primary, 4096)
                except OSError:  # EIO: the CLI closed its end
                    break
                if not chunk:
                    break
                seen += chunk
            assert proc.wait(timeout=120) == 1
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    text = seen.decode()
    assert client_token(stack) not in text
    return text


def test_on_a_terminal_the_progress_is_one_line_redrawn_and_erased(stack: Stack) -> None:
    text = on_a_terminal(stack, "xterm-256color")
    draws = [d for d in text.split("\r") if d.startswith("orders: waiting for")]
    assert len(draws) >= 2, f"not redrawn in place: {text!r}"
    for draw in draws:
        assert draw.endswith("\033[K") and "\n" not in draw, repr(draw)
        assert draw.startswith(f"orders: waiting for Vault at {stack.settings.vault_addr}")
    # erased, then the final message on a line of its own
    final = text.rsplit("\r\033[K", 1)[1]
    assert final.strip().startswith(
        f"orders: error: Vault at {stack.settings.vault_addr} did not answer within 6 s"
    ), repr(text)


def test_a_terminal_that_cannot_redraw_gets_plain_lines(stack: Stack) -> None:
    text = on_a_terminal(stack, "dumb")
    assert "\033" not in text, repr(text)
    *progress, final = text.replace("\r\n", "\n").strip().splitlines()
    assert progress, repr(text)
    for line in progress:
        assert PROGRESS.match(line) is not None, repr(line)
    assert final.startswith(
        f"orders: error: Vault at {stack.settings.vault_addr} did not answer within 6 s"
    ), repr(text)
