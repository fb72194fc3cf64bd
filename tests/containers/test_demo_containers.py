"""`make demo CONTAINERS=1` end to end: the make target run for real, its six workers
containers of the images the session built (orders_ops.testing_images: the target's own
`orders-images --keep` then finds every image built and takes seconds), against the
session's stack (its own state folder and ports).

Runs after test_containers.py (this folder's tests run last, in file order): the demo
stops the private engine when it is done, as `make demo CONTAINERS=1` does; the test
starts it again for whatever runs after it.
"""

from __future__ import annotations

import subprocess

import pytest
import support  # tests/ is on pytest's pythonpath

from orders_ops.demo_containers import WORKER_IMAGES
from orders_ops.dockerd import PrivateDocker
from orders_ops.settings import repo_root
from orders_ops.stack import Stack

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]


def test_make_demo_containers_passes_with_six_worker_containers(
    image_engine: PrivateDocker, stack: Stack
) -> None:
    local = [w.name for w in stack.workers if w.pid() is not None]
    assert not local, f"local worker processes run ({local}): the containers must do the work"
    before = {s.name: s.pid() for s in stack.servers}
    try:
        done = subprocess.run(
            ["make", "--no-print-directory", "-C", str(repo_root()), "demo", "CONTAINERS=1"],
            capture_output=True,
            text=True,
            timeout=850,
            env=support.demo_env(),
            check=False,
        )
        stopped_engine = image_engine.pid() is None
    finally:
        image_engine.start()  # adopts it when the demo left it running
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "demo passed" in out, out[-3000:]
    assert "six workers, each a container of its image under its chart's contract" in out
    assert "each a process with only its own identity token" not in out
    lines = out.splitlines()
    # each worker started from its image as a container of the demo's and ready: one line
    # "  <image> orders-demo-<service>-<id> ready in ..." per worker, no other
    started = [
        line.split() for line in lines if line.startswith("  orders-") and "ready in" in line
    ]
    assert sorted((w[0], w[1].rsplit("-", 1)[0]) for w in started) == sorted(
        (spec.image, f"orders-demo-{spec.service}") for spec in WORKER_IMAGES
    ), started
    for spec in WORKER_IMAGES:  # and its process scanned for static secrets, none found
        audit = [line for line in lines if line.split()[:1] == [f"container-{spec.service}"]]
        assert len(audit) == 1 and " none found in " in audit[0], (spec.service, audit)
    assert support.demo_openers(out) == {f: [c] for f, c in support.DEMO_FIELD_CONSUMERS.items()}
    # it stopped what it started: its containers (removed, not only stopped), the engine,
    # and no worker of the stack runs; the session's servers still do
    assert stopped_engine, "the demo left the private engine running"
    left = image_engine.docker("ps", "--all", "--quiet", "--filter", "name=orders-demo-").stdout
    assert left.split() == [], f"the demo's containers are still there: {left}"
    assert {s.name: s.pid() for s in stack.servers} == before
