"""``make demo CONTAINERS=1``: the six workers as containers of their images.

Each runs as its chart's Deployment declares (orders_ops.containers): user 10001, a
read-only root filesystem, no capability, no privilege escalation, a tmpfs /tmp and its
own identity token mounted read-only, on host networking against the local stack. The
images come from ``make images`` (``orders-images --keep`` leaves the engine running).
"""

from __future__ import annotations

from collections.abc import Callable

from orders_ops.containers import ContainerFleet
from orders_ops.dockerd import DockerError, PrivateDocker
from orders_ops.images import IMAGES, image_exists
from orders_ops.stack import Stack

WORKER_IMAGES = tuple(s for s in IMAGES if s.service != "codec-server")


def start(stack: Stack, say: Callable[[str], None]) -> ContainerFleet:
    """The six worker containers, ready; no local worker process may poll beside them."""
    running = [w.name for w in stack.workers if w.pid() is not None]
    if running:
        raise DockerError(f"local workers run ({', '.join(running)}): `make down` first")
    engine = PrivateDocker()
    engine.start()
    missing = [s.image for s in WORKER_IMAGES if not image_exists(engine, s.image)]
    if missing:
        raise DockerError(f"images missing ({', '.join(missing)}): run `make images` first")
    fleet = ContainerFleet(engine, stack.settings, "orders-demo")
    try:
        fleet.up(WORKER_IMAGES)
    except BaseException:
        fleet.down()
        raise
    for r in fleet.running.values():
        say(f"  {r.spec.image:<28} {r.name:<32} ready in {r.ready_seconds:.1f} s at {r.url}")
    return fleet


def pids(fleet: ContainerFleet) -> dict[str, int | None]:
    """Each container's main process as the host sees it (for the secret scan)."""
    return {f"container-{service}": fleet.pid(service) for service in fleet.running}


def stop(fleet: ContainerFleet) -> None:
    """The containers, then the private engine (`make down` would stop it too)."""
    fleet.down()
    fleet.engine.stop()
