"""``orders-images`` (``make images``): build every service image with a private engine.

1. Starts the private dockerd of this checkout (:mod:`orders_ops.dockerd`), or adopts it.
2. Builds the local base image ``orders-base:local`` once: no registry can be reached
   here, so the pinned ``python:3.11-slim`` digest the root Dockerfile defaults to
   cannot be pulled. It is Debian (the suite and mirror apt uses) with its python3,
   made with ``debootstrap`` and brought in with ``docker import``; the host's CA
   bundle is copied in so builds reach the package index through a TLS-inspecting proxy.
3. Builds the six worker images and the codec server's (``orders-<svc>:local``) from
   the root ``Dockerfile`` with ``BASE_IMAGE=orders-base:local``, or from a team's own
   ``services/<svc>/Dockerfile`` when there is one; prints one line per image and a
   table (image, size, build seconds).
4. Stops the engine it started, by PID (``--keep`` leaves it running for tests/demo).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from orders_ops.dockerd import DockerError, PrivateDocker, docker_cli
from orders_shared.catalog import SERVICES

BASE_TAG = "orders-base:local"
TAG = "local"
# what the base holds beyond Debian's minimal system; python3-venv lets the build
# stage make a throw-away venv for uv (ensurepip), the runtime venv is made by uv
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# trimmed from the base: package caches and lists, documentation, manuals, translations
# of the system's messages (33 MB; nothing in an image prints them)
_TRIM = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class ImageSpec:
    """One image: the build arguments of the root Dockerfile."""

    service: str  # folder under services/
    package: str  # its uv workspace member
    entrypoint: str  # its console script
    port: int  # metrics/health (workers) or HTTP (codec server)

    @property
    def image(self) -> str:
        return f"orders-{self.service}:{TAG}"

    @property
    def source(self) -> str:
        return f"services/{self.service}"

    def dockerfile(self, repo: Path) -> Path:
        """A team's own ``services/<svc>/Dockerfile`` wins over the shared root one."""
        own = repo / self.source / "Dockerfile"
        return own if own.is_file() else repo / "Dockerfile"

    def build_args(self, base_image: str) -> dict[str, str]:
        return {
            "BASE_IMAGE": base_image,
            "PACKAGE": self.package,
            "SOURCE": self.source,
            "ENTRYPOINT": self.entrypoint,
            "PORT": str(self.port),
        }


IMAGES: tuple[ImageSpec, ...] = (
    *(ImageSpec(s, f"orders-{s}", f"orders-{s}-worker", 9464) for s in SERVICES),
    ImageSpec("codec-server", "orders-codec-server", "orders-codec-server", 8080),
)


@dataclass(frozen=True)
class Built:
    image: str
    size_mb: float
    seconds: float


def _debian_source() -> tuple[str, str]:
    """(suite, mirror) of the apt configuration: the base is the same Debian as the host."""
    suite = ""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            suite = line.split("=", 1)[1].strip('"')
    texts = [p.read_text() for p in Path("/etc/apt/sources.list.d").glob("*.sources")]
    for text in texts:
        for line in text.splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return suite, line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["deb"] and "security" not in line:
                return suite, next(p for p in parts[1:] if "://" in p)
    return suite or "bookworm", "http://deb.debian.org/debian"


def build_base(engine: PrivateDocker, log: Path) -> float:
    """debootstrap a minimal Debian with python3 into ``.docker/base-rootfs`` and import
    it as :data:`BASE_TAG`. Returns the seconds taken."""
    if shutil.which("debootstrap") is None:
        raise DockerError("debootstrap is missing: run ops/scripts/install-docker.sh as root")
    started = time.monotonic()
    suite, mirror = _debian_source()
    rootfs = engine.root / "base-rootfs"
    cache = engine.root / "debs"  # the .debs, kept so a rebuild downloads nothing
    shutil.rmtree(rootfs, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                f"--cache-dir={cache}",
                suite,
                str(rootfs),
                mirror,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if proc.returncode != 0:
        raise DockerError(f"debootstrap {suite} from {mirror} failed; see {log}")
    import_rootfs(engine, rootfs, suite)
    return time.monotonic() - started


def import_rootfs(engine: PrivateDocker, rootfs: Path, suite: str) -> None:
    """Trim the debootstrapped tree, add the host's CA bundle, ``docker import`` it."""
    for part in _TRIM:
        for child in (rootfs / part).glob("*"):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
    changes = [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
        "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
        f'LABEL org.opencontainers.image.description="local base: Debian {suite} with python3"',
        'CMD ["python3"]',
    ]
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
    )
    argv = ["import", *(a for c in changes for a in ("--change", c)), "-", BASE_TAG]
    try:
        engine.docker(*argv, stdin=tar.stdout, timeout=600)
    finally:
        if tar.stdout is not None:
            tar.stdout.close()
        tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)


def build_image(
    engine: PrivateDocker, repo: Path, spec: ImageSpec, base_image: str, log: Path
) -> Built:
    """``docker build`` one image from the repository root (host network: the build
    steps fetch the locked packages; the engine has no bridge)."""
    started = time.monotonic()
    argv = ["build", "--network", "host", "-f", str(spec.dockerfile(repo)), "-t", spec.image]
    for key, value in spec.build_args(base_image).items():
        argv += ["--build-arg", f"{key}={value}"]
    with log.open("w") as out:  # streamed: `tail -f` it while a cold build runs
        proc = subprocess.run(
            [docker_cli(), *argv, str(repo)],
            env=engine.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1800,
            check=False,
        )
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise DockerError(f"building {spec.image} failed (full log: {log}):\n{tail}")
    seconds = time.monotonic() - started
    size = int(engine.docker("image", "inspect", "--format", "{{.Size}}", spec.image).stdout)
    return Built(spec.image, size / 1e6, seconds)


def image_exists(engine: PrivateDocker, image: str) -> bool:
    return engine.docker("image", "inspect", image, check=False).returncode == 0


def build_all(
    engine: PrivateDocker,
    repo: Path,
    specs: Sequence[ImageSpec] = IMAGES,
    *,
    rebuild_base: bool = False,
    echo: Callable[[str], None] = print,
) -> list[Built]:
    logs = engine.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if rebuild_base or not image_exists(engine, BASE_TAG):
        echo(f"base      {BASE_TAG}: debootstrap + docker import (about 1-3 min, once)")
        seconds = build_base(engine, logs / "base.log")
        echo(f"base      {BASE_TAG}: built in {seconds:.0f} s")
    else:
        echo(f"base      {BASE_TAG}: present (--rebuild-base makes it again)")
    built = []
    for n, spec in enumerate(specs, 1):
        step = f"[{n}/{len(specs)}]"
        echo(f"{step} building {spec.image} from {spec.dockerfile(repo).relative_to(repo)}")
        result = build_image(engine, repo, spec, BASE_TAG, logs / f"{spec.service}.log")
        echo(f"{step} {result.image}: {result.size_mb:.0f} MB in {result.seconds:.1f} s")
        built.append(result)
    return built


def table(built: Sequence[Built]) -> str:
    rows = [f"{'image':<28} {'size MB':>8} {'build s':>8}"]
    rows += [f"{b.image:<28} {b.size_mb:>8.0f} {b.seconds:>8.1f}" for b in built]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="orders-images",
        description="Build the worker and codec-server images with a private Docker engine "
        "(state in <repo>/.docker/).",
    )
    parser.add_argument("services", nargs="*", help="only these services (default: all seven)")
    parser.add_argument(
        "--keep", action="store_true", help="leave the engine running (tests and the demo adopt it)"
    )
    parser.add_argument("--stop", action="store_true", help="stop a kept engine and exit")
    parser.add_argument("--rebuild-base", action="store_true", help="debootstrap the base again")
    args = parser.parse_args(argv)
    # SIGTERM (a test session ending early) runs the finally below and stops the build
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("orders-images: stopped (SIGTERM)"))
    engine = PrivateDocker()
    if args.stop:
        print("orders-images: engine stopped" if engine.stop() else "orders-images: not running")
        return
    from orders_ops.settings import repo_root

    repo = repo_root()
    if repo is None:
        sys.exit("orders-images: run from a checkout (no uv.lock + ops/ found above this package)")
    unknown = sorted(set(args.services) - {s.service for s in IMAGES})
    if unknown:
        sys.exit(
            f"orders-images: unknown service(s) {unknown}; known: {[s.service for s in IMAGES]}"
        )
    specs = [s for s in IMAGES if not args.services or s.service in args.services]
    started_here = False
    try:
        started_here = engine.start()
        how = "started" if started_here else "adopted"
        print(f"engine    {engine.host} ({how}, pid {engine.pid()})")
        built = build_all(engine, repo, specs, rebuild_base=args.rebuild_base)
    except DockerError as exc:
        sys.exit(f"orders-images: {exc}")
    finally:
        if started_here and not args.keep:
            engine.stop()
    print(table(built))
    if args.keep:
        print(f"engine kept running: DOCKER_HOST={engine.host} (stop: orders-images --stop)")
