"""The Tiltfile, executed in starlark-go (the interpreter Tilt uses) with Tilt's built-ins
recorded as Python callables, in both modes.

starlark-go has no ``load()``: the harness pre-processes it. ``load("./x", ...)``
is replaced by x's text (after checking x defines the names asked for) and
``load("ext://...", ...)`` by nothing, its names being supplied as built-ins.
``config.f(...)`` becomes ``config__f(...)`` (Python objects with attributes do
not cross into Starlark). The Tiltfile itself stays valid for real Tilt.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import symtable
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
import starlark_go
import yaml

from orders_ops.settings import StackSettings
from orders_ops.stack import worker_env
from orders_shared.catalog import SERVICES

if TYPE_CHECKING:
    from conftest import Rendered

ROOT = Path(__file__).resolve().parents[2]
WORKERS = list(SERVICES)
TIERS = {s: ("workflow" if s == "orchestrator" else "activities") for s in WORKERS}
LOAD = re.compile(r"^load\(\s*\"([^\"]+)\"((?:\s*,\s*\"[^\"]+\")+)\s*\)\s*$", re.M)
EXTENSIONS = {"ext://restart_process": ("docker_build_with_restart",)}


# Starlark's universe: names every module sees without loading them
STARLARK_UNIVERSE = {
    "None", "True", "False", "any", "all", "bool", "bytes", "dict", "dir", "enumerate", "fail",
    "float", "getattr", "hasattr", "hash", "int", "len", "list", "max", "min", "print", "range",
    "repr", "reversed", "sorted", "str", "tuple", "type", "zip", "load", "struct",
}  # fmt: skip
# Tilt's own built-ins the project calls (every module sees them; ext:// names it does not)
TILT_BUILTINS = {
    "version_settings", "allow_k8s_contexts", "watch_file", "k8s_yaml", "k8s_resource",
    "docker_build", "local_resource", "helm", "local", "sync", "fall_back_on", "config",
    "os", "run", "read_file",
}  # fmt: skip


def free_globals(path: Path) -> dict[str, set[str]]:
    """For one Starlark module: the global names it uses but neither defines, loads itself,
    nor gets from Tilt or Starlark. In Tilt each loaded file is a module of its own: it sees
    only its own globals and what its own load() statements bring, never its loader's.
    (Starlark's syntax is close enough to Python's for Python's symbol tables.)"""
    text = path.read_text()
    loaded = set()
    for match in LOAD.finditer(text):
        loaded.update(re.findall(r"\"([^\"]+)\"", match.group(2)))
    top = symtable.symtable(text, str(path), "exec")
    defined = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    known = defined | loaded | STARLARK_UNIVERSE | TILT_BUILTINS
    missing: dict[str, set[str]] = {}

    def visit(table: symtable.SymbolTable) -> None:
        for sym in table.get_symbols():
            name = sym.get_name()
            is_free = sym.is_referenced() and (
                (table is top and not sym.is_assigned()) or (table is not top and sym.is_global())
            )
            if is_free and name not in known:
                missing.setdefault(name, set()).add(table.get_name())
        for child in table.get_children():
            visit(child)

    visit(top)
    return missing


def loaded_modules(path: Path) -> list[Path]:
    """The file and every file it loads, transitively (ext:// extensions excluded)."""
    found = [path]
    for match in LOAD.finditer(path.read_text()):
        if not match.group(1).startswith("ext://"):
            found += loaded_modules((path.parent / match.group(1)).resolve())
    return found


def preprocess(path: Path, seen: tuple[Path, ...] = ()) -> str:
    """The file's text with every load() resolved as described above."""
    assert path not in seen, f"load cycle through {path}"
    text = path.read_text()

    def resolve(match: re.Match[str]) -> str:
        target = match.group(1)
        names = re.findall(r"\"([^\"]+)\"", match.group(2))
        if target.startswith("ext://"):
            assert tuple(names) == EXTENSIONS[target], f"{target}: {names}"
            return f"# (load of {target}: supplied as built-ins)"
        loaded = (path.parent / target).resolve()
        body = preprocess(loaded, (*seen, path))
        for name in names:
            assert re.search(rf"^(def {name}\(|{name} = )", body, re.M), f"{target} lacks {name}"
        return f"# --- {target}\n{body}\n# --- end of {target}"

    return re.sub(r"\bconfig\.(\w+)\(", r"config__\1(", LOAD.sub(resolve, text))


@dataclass
class Call:
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class TiltRecorder:
    """Tilt's built-ins as Python callables that record each call.

    ``builtins`` keeps a reference to every callable for the recorder's lifetime:
    starlark-go holds none, and a collected callable crashes the interpreter.
    """

    flags: dict[str, Any]
    calls: list[Call] = field(default_factory=list)
    builtins: dict[str, Callable[..., Any]] = field(default_factory=dict)
    defined_flags: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # files a test adds (read_file)

    def __post_init__(self) -> None:
        returns: dict[str, Callable[..., Any]] = {
            "helm": lambda path, **_: f"<helm {path}>",
            "local": lambda *_, **__: "",
            "sync": lambda src, dst: {"sync": [src, dst]},
            "fall_back_on": lambda files: {"fall_back_on": files},
            "config__parse": lambda: {**self.defined_flags, **self.flags},
            # Tilt's read_file(path, default): the file's text, or default when it is missing
            "read_file": lambda path, default=None: self.files.get(
                path, (ROOT / path).read_text() if (ROOT / path).is_file() else default
            ),
        }
        names = [
            "version_settings", "allow_k8s_contexts", "watch_file", "k8s_yaml", "k8s_resource",
            "docker_build", "docker_build_with_restart", "local_resource", "config__define_bool",
            *returns,
        ]  # fmt: skip
        for name in names:
            self.builtins[name] = self._recorder(name, returns.get(name))

    def _recorder(self, name: str, result: Callable[..., Any] | None) -> Callable[..., Any]:
        def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(Call(name, args, kwargs))
            if name == "config__define_bool":
                self.defined_flags[args[0]] = args[1]
            return result(*args, **kwargs) if result else None

        return record

    def named(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.name == name]


def run_tiltfile(flags: dict[str, Any], files: dict[str, str] | None = None) -> TiltRecorder:
    recorder = TiltRecorder(flags, files=dict(files or {}))
    starlark_go.configure_starlark(allow_global_reassign=True, allow_recursion=False)
    interpreter = starlark_go.Starlark(globals=recorder.builtins)
    interpreter.exec(preprocess(ROOT / "Tiltfile"), filename="Tiltfile")
    return recorder


@pytest.fixture(scope="module")
def cluster() -> TiltRecorder:
    return run_tiltfile({})


@pytest.fixture(scope="module")
def local() -> TiltRecorder:
    return run_tiltfile({"local": True})


# --------------------------------------------------------------------------- both modes


def test_preprocessing_inlines_helpers_and_rejects_a_missing_name(tmp_path: Path) -> None:
    (tmp_path / "lib.star").write_text("def a():\n    return 1\n")
    (tmp_path / "Tiltfile").write_text('load("./lib.star", "a", "b")\n')
    with pytest.raises(AssertionError, match=r"\./lib\.star lacks b"):
        preprocess(tmp_path / "Tiltfile")


def test_module_scope_check_sees_a_name_only_the_loader_loaded(tmp_path: Path) -> None:
    (tmp_path / "lib.star").write_text(
        'NS = "x"\n\ndef build(name):\n    docker_build_with_restart(name, ".")\n    return NS\n'
    )
    (tmp_path / "Tiltfile").write_text(
        'load("ext://restart_process", "docker_build_with_restart")\n'
        'load("./lib.star", "build")\nbuild("a")\n'
    )
    assert free_globals(tmp_path / "Tiltfile") == {}
    assert free_globals(tmp_path / "lib.star") == {"docker_build_with_restart": {"build"}}


def test_every_starlark_module_sees_only_its_own_names() -> None:
    """Tilt runs each loaded file as its own module: a helper file that calls an extension
    its loader loaded fails on a real `tilt up`, in both modes."""
    modules = loaded_modules(ROOT / "Tiltfile")
    assert len(modules) >= 2
    for module in modules:
        assert free_globals(module) == {}, module.relative_to(ROOT)


@pytest.mark.parametrize("mode", ["cluster", "local"])
def test_version_settings_come_first_and_the_local_flag_is_defined(
    request: pytest.FixtureRequest, mode: str
) -> None:
    recorder: TiltRecorder = request.getfixturevalue(mode)
    assert recorder.calls[0].name == "version_settings"
    assert recorder.calls[0].kwargs == {"constraint": ">=0.33.0"}
    assert recorder.defined_flags == {"local": False}


# --------------------------------------------------------------------------- cluster mode


def test_cluster_mode_only_talks_to_the_ctlptl_kind_cluster(cluster: TiltRecorder) -> None:
    (call,) = cluster.named("allow_k8s_contexts")
    docs = list(yaml.safe_load_all((ROOT / "tilt" / "kind-cluster.yaml").read_text()))
    (kind,) = [d for d in docs if d["kind"] == "Cluster"]
    assert call.args == (kind["name"],) == ("kind-orders",)
    assert kind["registry"] == next(d["name"] for d in docs if d["kind"] == "Registry")


def test_cluster_mode_builds_one_live_updated_image_per_service(cluster: TiltRecorder) -> None:
    builds = {c.args[0]: c for c in cluster.named("docker_build_with_restart")}
    assert sorted(builds) == sorted([f"orders-{s}" for s in WORKERS] + ["orders-codec-server"])
    for service in [*WORKERS, "codec-server"]:
        call = builds[f"orders-{service}"]
        package = "orders_" + service.replace("-", "_")
        assert call.args[1] == "."  # the repository root is the context
        expected_entry = (
            "orders-codec-server" if service == "codec-server" else f"orders-{service}-worker"
        )
        # the one root Dockerfile, told which member to build (a team's own
        # services/<svc>/Dockerfile would win: test_a_team_dockerfile_wins)
        assert call.kwargs["dockerfile"] == "Dockerfile"
        assert call.kwargs["build_args"] == {
            "PACKAGE": f"orders-{service}",
            "SOURCE": f"services/{service}",
            "ENTRYPOINT": expected_entry,
            "PORT": "8080" if service == "codec-server" else "9464",
        }
        assert call.kwargs["target"] == "dev"
        assert call.kwargs["entrypoint"] == [expected_entry]
        assert call.kwargs["only"] == [
            "pyproject.toml",
            "uv.lock",
            "shared/pyproject.toml",
            "shared/src",
            f"services/{service}/pyproject.toml",
            f"services/{service}/src",
        ]
        syncs = [step["sync"] for step in call.kwargs["live_update"] if "sync" in step]
        site = "/opt/venv/lib/python3.11/site-packages"
        assert syncs == [
            [f"services/{service}/src/{package}", f"{site}/{package}"],
            ["shared/src/orders_shared", f"{site}/orders_shared"],
        ]
        assert call.kwargs["live_update"][0] == {
            "fall_back_on": [
                "uv.lock",
                "pyproject.toml",
                "shared/pyproject.toml",
                f"services/{service}/pyproject.toml",
            ]
        }
        for path in [*call.kwargs["only"], call.kwargs["dockerfile"], *(s for s, _ in syncs)]:
            assert (ROOT / path).exists(), path
        text = (ROOT / call.kwargs["dockerfile"]).read_text()
        assert "AS dev\n" in text


def test_a_team_dockerfile_wins() -> None:
    """A team that keeps services/<svc>/Dockerfile gets it built; the others keep the root one."""
    own = {"services/payment/Dockerfile": "ARG BASE_IMAGE=x\nFROM ${BASE_IMAGE} AS dev\n"}
    builds = {c.args[0]: c.kwargs for c in run_tiltfile({}, own).named("docker_build_with_restart")}
    assert builds["orders-payment"]["dockerfile"] == "services/payment/Dockerfile"
    assert {b["dockerfile"] for n, b in builds.items() if n != "orders-payment"} == {"Dockerfile"}


def test_cluster_mode_installs_one_helm_release_per_chart(cluster: TiltRecorder) -> None:
    charts = [c.args[0] for c in cluster.named("helm")]
    assert sorted(charts) == sorted(
        ["helm/dev-deps", "helm/bootstrap", "helm/codec-server", *(f"helm/{s}" for s in WORKERS)]
    )
    for call in cluster.named("helm"):
        assert (ROOT / call.args[0] / "Chart.yaml").is_file()
        assert call.kwargs["namespace"] == "orders"
    released = {c.args[0]: c.kwargs for c in cluster.named("helm")}
    for service in WORKERS:
        assert released[f"helm/{service}"]["name"] == f"orders-{service}"
        # the only dev override: a writable root filesystem for live_update
        assert released[f"helm/{service}"]["set"] == [
            "global.securityContext.readOnlyRootFilesystem=false"
        ]
    dependency_builds = [c.args[0] for c in cluster.named("local")]
    assert sorted(dependency_builds) == sorted(
        f"helm dependency build --skip-refresh {chart}"
        for chart in charts
        if chart != "helm/dev-deps"
    )
    yamls = [c.args[0] for c in cluster.named("k8s_yaml")]
    assert "tilt/namespace.yaml" in yamls
    assert (ROOT / "tilt/namespace.yaml").is_file()


def test_cluster_mode_resources_are_the_rendered_workloads_with_tier_labels(
    cluster: TiltRecorder, rendered: dict[tuple[str, str], Rendered]
) -> None:
    resources = {
        c.kwargs.get("new_name", c.args[0] if c.args else None): c
        for c in cluster.named("k8s_resource")
    }
    for service in WORKERS:
        call = resources[service]
        workload = call.kwargs["workload"]
        assert rendered[(service, "default")].one("Deployment")["metadata"]["name"] == workload
        assert call.kwargs["labels"] == [TIERS[service]]
        assert call.kwargs["resource_deps"] == ["bootstrap", "temporal"]
    assert resources["codec-server"].kwargs["labels"] == ["tools"]
    for infra in ("temporal", "openbao", "postgres", "bootstrap"):
        assert resources[infra].kwargs["labels"] == ["infra"], infra
    forwards = {name: c.kwargs.get("port_forwards", []) for name, c in resources.items() if name}
    assert forwards["temporal"][0] == "8233:8233"
    assert forwards["openbao"] == ["8200:8200"]
    assert forwards["codec-server"] == ["8081:8080"]
    assert cluster.named("local_resource") == []


# --------------------------------------------------------------------------- local mode


def test_local_mode_runs_the_stack_and_every_worker_process(local: TiltRecorder) -> None:
    resources = {c.args[0]: c.kwargs for c in local.named("local_resource")}
    assert list(resources) == ["local-stack", *WORKERS]
    assert resources["local-stack"]["cmd"] == ".venv/bin/orders-stack up"
    assert resources["local-stack"]["labels"] == ["infra"]
    ports = set()
    for service in WORKERS:
        kwargs = resources[service]
        argv = kwargs["serve_cmd"].split()
        assert argv[:3] == [".venv/bin/python", "tilt/run_worker.py", service]
        ports.add(int(argv[argv.index("--metrics-port") + 1]))
        assert kwargs["deps"] == [f"services/{service}/src", "shared/src"]
        assert kwargs["resource_deps"] == ["local-stack"]
        assert kwargs["labels"] == [TIERS[service]]
    assert len(ports) == len(WORKERS)  # one metrics port per local worker
    for name in ("docker_build", "docker_build_with_restart", "k8s_yaml", "helm"):
        assert local.named(name) == [], name


def _run_worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "orders_tilt_run_worker", ROOT / "tilt/run_worker.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("service", WORKERS)
def test_local_worker_gets_exactly_the_stack_worker_env(
    service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ORDERS_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("VAULT_TOKEN", "dev-root-must-not-leak")
    argv, env = _run_worker().command(service, 9474)
    assert env == {**worker_env(StackSettings.from_env(), service), "ORDERS_METRICS_PORT": "9474"}
    assert "VAULT_TOKEN" not in env
    assert env["VAULT_AUTH_ROLE"] == f"orders-{service}"
    assert argv[1:] == ["-c", f"from orders_{service}.worker import main; main()"]


def test_local_worker_refuses_an_unknown_service() -> None:
    with pytest.raises(SystemExit, match="unknown service 'billing'"):
        _run_worker().command("billing")


# --------------------------------------------------------------------------- first real run


def _tiltignored(path: str) -> bool:
    patterns = [
        line.strip().rstrip("/")
        for line in (ROOT / ".tiltignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p + "/*") for p in patterns)


def test_what_the_tiltfile_writes_is_not_watched(cluster: TiltRecorder) -> None:
    """Tilt re-executes the Tiltfile when a file under a helm() chart changes; the
    dependency build writes helm/<chart>/charts/, so that must be ignored, and it must
    not rewrite the (watched, committed) Chart.lock, which `dependency update` does."""
    for call in cluster.named("local"):
        *_, chart = call.args[0].split()
        assert call.args[0].startswith("helm dependency build "), call.args[0]
        assert _tiltignored(f"{chart}/charts/orders-lib-0.1.0.tgz"), chart
        assert (ROOT / chart / "Chart.lock").is_file(), f"{chart}: commit its Chart.lock"
    assert not _tiltignored("helm/validate/templates/worker.yaml")


def test_restart_file_is_not_hidden_by_a_volume(
    cluster: TiltRecorder, rendered: dict[tuple[str, str], Rendered]
) -> None:
    """restart_process bakes its marker file into the image; a volume mounted over its
    folder hides it, entr exits and the pod crash-loops."""
    builds = {c.args[0]: c.kwargs for c in cluster.named("docker_build_with_restart")}
    for service in [*WORKERS, "codec-server"]:
        restart_file = builds[f"orders-{service}"].get("restart_file", "/tmp/.restart-proc")
        doc = rendered[(service, "default")].one("Deployment")
        pod = doc["spec"]["template"]["spec"]
        mounts = [m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])]
        for mount in mounts:
            assert not restart_file.startswith(mount.rstrip("/") + "/"), (service, mount)
        # the dev image's user must be able to touch it
        dockerfile = (ROOT / builds[f"orders-{service}"]["dockerfile"]).read_text()
        # dev is the build stage, whose /opt/venv the app user made and owns
        assert "\nFROM build AS dev\n" in dockerfile
        build = dockerfile.split("AS build\n", 1)[1].split("\nFROM ", 1)[0]
        assert "chown 10001:10001 /opt/venv" in build
        assert build.index("USER 10001:10001") < build.index("uv sync")
        assert restart_file.startswith("/opt/venv/")


def test_kind_cluster_pins_no_node_image_kind_may_refuse() -> None:
    """Current kind/ctlptl refuse old node images (v1.30.0 is refused): no pin, kind's own
    default node image; the minimum kind version is stated where people read it."""
    text = (ROOT / "tilt" / "kind-cluster.yaml").read_text()
    (kind,) = [d for d in yaml.safe_load_all(text) if d["kind"] == "Cluster"]
    assert "kubernetesVersion" not in kind
    assert "kind >= 0.24" in text
    assert "kind >= 0.24" in (ROOT / "docs" / "deployment.md").read_text()
