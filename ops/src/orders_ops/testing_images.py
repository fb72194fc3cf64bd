"""pytest hooks for ``tests/containers``: the image build runs beside the other tests.

A cold build takes minutes (the Debian base, then seven images), so when the session
has container tests it installs the engine first (apt, serialised: never beside another
apt run of this session), then starts ``orders-images --keep`` in the background, orders
the container tests last, and lets them wait for the build (``image_engine``). The
private engine is stopped at the end of the session unless it ran before it.

In CI (``CI`` set) the container tests must run: a missing engine fails them. Elsewhere
they skip, with the reason, when the engine cannot be installed (not root, no apt).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from orders_ops.dockerd import PrivateDocker
from orders_ops.settings import repo_root

BUILD_TIMEOUT = float(os.environ.get("ORDERS_IMAGE_BUILD_TIMEOUT", "2400"))


@dataclass
class _Build:
    engine: PrivateDocker
    log: Path
    was_running: bool
    process: subprocess.Popen[bytes] | None = None
    unavailable: str | None = None  # why the engine cannot be had here


_build: _Build | None = None


def _is_container_test(item: pytest.Item) -> bool:
    parts = Path(str(item.path)).parts
    return "tests" in parts and "containers" in parts[parts.index("tests") :]


def _start() -> _Build:
    root = repo_root() or Path.cwd()
    engine = PrivateDocker()
    engine.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    build = _Build(engine, engine.root / "test-build.log", was_running=engine.pid() is not None)
    install = subprocess.run(
        ["bash", str(root / "ops" / "scripts" / "install-docker.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    missing = [tool for tool in ("dockerd", "debootstrap") if shutil.which(tool) is None]
    if install.returncode != 0 or missing or os.geteuid() != 0:
        # not root or no apt: the script says why (and exits 0 outside CI)
        why = install.stderr.strip() or "a private dockerd needs root"
        build.unavailable = f"no Docker engine for tests/containers: {why}"
        return build
    with build.log.open("wb") as log:
        build.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "orders-images"), "--keep"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return build


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    global _build
    containers = [item for item in items if _is_container_test(item)]
    if not containers:
        return
    items[:] = [item for item in items if not _is_container_test(item)] + containers
    if _build is None and not config.option.collectonly:
        _build = _start()


@pytest.fixture(scope="session")
def image_engine() -> PrivateDocker:
    """The private engine with every image built (waits for the background build)."""
    if _build is None:
        pytest.fail("no image build was started (collection hook did not run)")
    if _build.unavailable:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the container tests: {_build.unavailable}")
        pytest.skip(_build.unavailable)
    assert _build.process is not None
    try:
        _build.process.wait(timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"the image build (orders-images --keep) did not finish in {BUILD_TIMEOUT:.0f} s "
            f"(ORDERS_IMAGE_BUILD_TIMEOUT); its log: {_build.log}"
        )
    tail = "\n".join(_build.log.read_text(errors="replace").splitlines()[-25:])
    if _build.process.returncode != 0:
        pytest.fail(f"orders-images failed (exit {_build.process.returncode}):\n{tail}")
    print(f"\n{tail}")  # the build's table: image, size, build seconds
    return _build.engine


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _build is None:
        return
    if _build.process is not None and _build.process.poll() is None:
        _build.process.terminate()  # orders-images stops its docker build on SIGTERM
        deadline = time.monotonic() + 30
        while _build.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if _build.process.poll() is None:
            _build.process.kill()
    if not _build.was_running:
        _build.engine.stop()
