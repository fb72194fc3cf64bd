"""Local workers are separate OS users: as root, each worker (and the codec server, and
the issuer) runs as its own user, and that user can read its own token and nothing of
anyone else's: not another service's token, not the issuer key, not the root token.

Proved by trying: a small reader runs through ``setpriv`` as each user against the
real files of the running stack.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from orders_ops import osusers
from orders_ops import stack as stack_module
from orders_ops.settings import StackSettings
from orders_ops.stack import LocalCodecServer, Stack, StackError
from orders_shared.catalog import SERVICES

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(os.geteuid() != 0, reason="only root can run workers as other users"),
]

READER = """
import json, sys
out = {}
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as f:
            f.read(1)
        out[path] = "read"
    except OSError as exc:
        out[path] = type(exc).__name__
print(json.dumps(out))
"""


def _try_read_as(user: str, paths: list[Path]) -> dict[str, str]:
    account = osusers.ensure_user(user)
    result = subprocess.run(
        osusers.as_user(account, [sys.executable, "-c", READER, *map(str, paths)]),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    answer: dict[str, str] = json.loads(result.stdout)
    return answer


def _secrets(s: StackSettings) -> list[Path]:
    """What no worker, codec server or issuer may read."""
    # (vault_admin's password is not among them: Vault rotates it at bootstrap and the
    # stored copy is deleted, so no file holds a working one)
    return [
        s.root_token_file,
        s.vault_unseal_key_file,
        s.pg_password_file,
        s.secrets_dir / "postgres-owner-password",
        s.provider_admin_token_file,  # the payment simulator's fault switch
    ]


@pytest.mark.parametrize("service", list(SERVICES))
def test_a_worker_user_reads_its_own_token_and_nothing_else(stack: Stack, service: str) -> None:
    s = stack.settings
    own = s.token_file(service)
    others = [s.token_file(n) for n in (*SERVICES, "client") if n != service]
    codec_token = LocalCodecServer(s).reader_token_file
    forbidden = [*others, codec_token, s.issuer_key_file, *_secrets(s)]
    for path in (own, *forbidden):
        assert path.exists(), f"{path} missing: the test would prove nothing"
    seen = _try_read_as(SERVICES[service].identity, [own, *forbidden])
    assert seen.pop(str(own)) == "read", "the worker cannot read its own token"
    assert seen == {str(p): "PermissionError" for p in forbidden}


def test_the_codec_user_reads_its_reader_token_only(stack: Stack) -> None:
    s = stack.settings
    own = LocalCodecServer(s).reader_token_file
    forbidden = [*(s.token_file(n) for n in (*SERVICES, "client")), s.issuer_key_file]
    forbidden += _secrets(s)
    seen = _try_read_as(osusers.CODEC_USER, [own, *forbidden])
    assert seen.pop(str(own)) == "read"
    assert seen == {str(p): "PermissionError" for p in forbidden}


def test_the_issuer_user_reads_its_key_but_no_stack_secret(stack: Stack) -> None:
    s = stack.settings
    forbidden = _secrets(s)
    seen = _try_read_as(osusers.ISSUER_USER, [s.issuer_key_file, *forbidden])
    assert seen.pop(str(s.issuer_key_file)) == "read"
    assert seen == {str(p): "PermissionError" for p in forbidden}


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])  # real uid; effective is the same with setpriv
    raise AssertionError(f"no Uid line for {pid}")


def test_each_running_process_is_its_own_user(workers: Stack) -> None:
    expected = {w.name: SERVICES[w.service].identity for w in workers.workers}
    expected |= {workers.codec.name: osusers.CODEC_USER}
    expected |= {workers.identity.name: osusers.ISSUER_USER}
    for server in (*workers.workers, workers.codec, workers.identity):
        pid = server.pid()
        assert pid is not None, f"{server.name} is not running"
        assert pwd.getpwuid(_uid_of(pid)).pw_name == expected[server.name], server.name
        # ready, so it imported its code from .venv; and its log (a file only root
        # can open, handed to it at start) has what it wrote
        assert server.healthy(), server.name
        log = server.rotated_log_file() if server is workers.codec else server.log_file
        assert log.stat().st_size > 0, f"{server.name} wrote no log"
    assert len(set(expected.values())) == len(expected)  # eight distinct users


def test_a_service_user_that_cannot_run_the_venv_is_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    (hidden / "python").symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(hidden / "python"))
    monkeypatch.setattr(stack_module, "_INTERPRETER_CHECKED", {})
    with pytest.raises(StackError, match=r"cannot run .* Fix: 'chmod o\+x "):
        stack_module.check_interpreter(osusers.ensure_user(osusers.ISSUER_USER))


def test_the_real_venv_runs_as_a_service_user() -> None:
    note = stack_module.check_interpreter(osusers.ensure_user(osusers.ISSUER_USER))
    assert note is None or "chmod o+x" in note
