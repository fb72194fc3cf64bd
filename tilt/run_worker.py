"""Run one worker in the foreground with exactly the environment ``orders-stack`` gives it.

Tilt's local mode (``tilt up -- --local``) starts each worker with
``local_resource(serve_cmd="python tilt/run_worker.py <service>")``. The
environment is built from scratch by :func:`orders_ops.stack.worker_env`: the
service's own identity token file, the servers' addresses and nothing of the
caller's (no VAULT_TOKEN, no admin database URL), as when the stack starts the
workers itself. Tilt only adds a metrics port per worker so six local workers
do not collide.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from orders_ops.settings import StackSettings
from orders_ops.stack import SERVICE_NAMES, worker_env


def command(service: str, metrics_port: int | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv and the complete environment of one local worker."""
    if service not in SERVICE_NAMES:
        raise SystemExit(
            f"run_worker: unknown service {service!r}; known: {', '.join(SERVICE_NAMES)}"
        )
    env = worker_env(StackSettings.from_env(), service)
    if metrics_port is not None:
        env["ORDERS_METRICS_PORT"] = str(metrics_port)
    argv = [sys.executable, "-c", f"from orders_{service}.worker import main; main()"]
    return argv, env


def main(args: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="run_worker", description=__doc__)
    parser.add_argument("service", help="one of: " + ", ".join(SERVICE_NAMES))
    parser.add_argument("--metrics-port", type=int, default=None)
    parsed = parser.parse_args(args)
    argv, env = command(parsed.service, parsed.metrics_port)
    os.execve(argv[0], argv, env)  # noqa: S606 (exec the worker in place: Tilt signals it directly)


if __name__ == "__main__":
    main()
