"""Vault HA on loopback (``ORDERS_VAULT_HA=1``, ``make up HA=1``): three OpenBao nodes
with integrated (raft) storage behind one local TCP front.

Nodes: ``vault-1..3`` listen on ``ORDERS_VAULT_HA_PORT`` [ORDERS_VAULT_PORT+2] and up
(node *i*: API on base+2(i-1), cluster/raft on the port above it), keep their raft
data in ``<state>/vault-ha/node-<i>/data`` and declare the same file audit device.
The stack initialises node 1 (one unseal key share, the root token: the same
``<state>/secrets`` files as the single node), joins nodes 2 and 3 to it
(``sys/storage/raft/join``) and unseals all three. A standby forwards every request
to the active node over the cluster port.

Front: HAProxy (Debian's ``haproxy``, installed on demand like nginx for TLS) listens
on ``ORDERS_VAULT_PORT``, the one address workers, the client, the codec server and
the bootstrap already use (``VAULT_ADDR`` is unchanged, so every process keeps its
own identity and nothing in the services knows about HA). It checks each node's
``/v1/sys/health`` every 0.5 s and sends connections only to the node that answers
200, the active one (a standby answers 429), as HashiCorp's load-balancer guidance
for Vault does. Not to standbys as well: a standby forwards to the active node, but
its answer can lag a write just made. Seen here: the bootstrap enabled a mount through
the front and its next call, sent to a standby, got "no handler for route" for it.
A node that is killed, sealed or paused (a SIGSTOPped process still completes TCP
handshakes, so only an HTTP check sees it) is out after two missed checks (1-2 s) and its open
connections are cut (``on-marked-down shutdown-sessions``), so clients retry on the
new leader. That is why a front and not client-side failover: hvac takes one URL,
and a list of URLs in every service would still not notice a node that accepts
connections but never answers. In production the same role is played by the cluster's load balancer
(docs/deployment.md).

A state folder holds one kind of Vault, since the root token and unseal key files are
shared: a single-node folder is refused in HA mode, and a folder holding a cluster is
run as one even without ``ORDERS_VAULT_HA`` (so ``down`` and ``status`` find it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orders_ops import apt
from orders_ops.settings import HOST, StackSettings, _switch
from orders_ops.stack import (
    Server,
    StackError,
    Vault,
    _is_root,
    _tail,
    child_env,
    private_dir,
    write_private,
)

HA_ENV = "ORDERS_VAULT_HA"
HA_PORT_ENV = "ORDERS_VAULT_HA_PORT"
NODES = 3
HAPROXY = "/usr/sbin/haproxy"
PACKAGES = ("haproxy",)
STABILIZATION = "2s"


def ha_requested() -> bool:
    """``ORDERS_VAULT_HA`` [0], read now (a test turns it on for one run)."""
    return _switch(HA_ENV)


def ha_dir(settings: StackSettings) -> Path:
    return settings.state_dir / "vault-ha"


def ha_enabled(settings: StackSettings) -> bool:
    """HA when asked for, or when the state folder already holds an HA cluster (so
    ``orders-stack down``/``status`` without the variable still find all three nodes)."""
    return ha_requested() or (ha_dir(settings) / "node-1").is_dir()


def node_ports(settings: StackSettings, index: int) -> tuple[int, int]:
    """(API, cluster) ports of node ``index`` (0-based)."""
    api = settings.vault_ha_port + 2 * index
    return api, api + 1


def node_id(index: int) -> str:
    return f"orders-vault-{index + 1}"


def ensure_haproxy() -> list[str]:
    """HAProxy, installed from Debian's packages when missing (as root)."""
    if Path(HAPROXY).is_file():
        return []
    if not _is_root() or shutil.which("apt-get") is None:
        raise StackError(
            f"HAProxy is missing ({HAPROXY}): the HA stack's Vault front needs it; install "
            f"it ('sudo apt-get install -y {' '.join(PACKAGES)}') or run without {HA_ENV}=1"
        )
    result = apt.install(PACKAGES, child_env())
    if result.returncode != 0 or not Path(HAPROXY).is_file():
        raise StackError(
            f"could not install {' '.join(PACKAGES)} (apt-get exit {result.returncode}): "
            f"{apt.failure_tail(result)}"
        )
    return [f"vault-ha: installed {' '.join(PACKAGES)}"]


def _get(url: str, token: str | None = None, timeout: float = 2.0) -> tuple[int, Any]:
    """``GET url`` (a loopback URL we built): (status, JSON body or None)."""
    headers = {"X-Vault-Token": token} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            return int(resp.status), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"null")
        except ValueError:
            body = None
        return int(exc.code), body


class VaultNode(Vault):
    """One OpenBao node of the HA cluster."""

    health_path = "sys/health?standbyok=true"  # ready: unsealed, active or standby

    def __init__(self, settings: StackSettings, index: int) -> None:
        super().__init__(settings)
        self.index = index
        api, cluster = node_ports(settings, index)
        self.name = f"vault-{index + 1}"
        self.ports = {"api": api, "cluster": cluster}
        self.port_vars = {"api": HA_PORT_ENV, "cluster": HA_PORT_ENV}
        self.expect = str(self.vault_dir / "server.hcl")
        self._joined = False

    @property
    def vault_dir(self) -> Path:
        return ha_dir(self.settings) / f"node-{self.index + 1}"

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.ports['api']}"

    def config_hcl(self) -> str:
        from orders_ops.vault_bootstrap import audit_config_hcl

        api, cluster = node_ports(self.settings, self.index)
        return (
            'storage "raft" {\n'
            f'  path = "{self.data_dir}"\n'
            f'  node_id = "{node_id(self.index)}"\n'
            "  performance_multiplier = 1\n"  # quick elections: a lost leader in ~2-3 s
            # autopilot looks every second (default 10 s) for a joined node to promote
            '  autopilot_reconcile_interval = "1s"\n'
            '  autopilot_update_interval = "1s"\n'
            "}\n"
            'listener "tcp" {\n'
            f'  address = "{HOST}:{api}"\n'
            f'  cluster_address = "{HOST}:{cluster}"\n'
            "  tls_disable = true\n"
            "}\n"
            f'api_addr = "http://{HOST}:{api}"\n'
            f'cluster_addr = "http://{HOST}:{cluster}"\n'
            "ui = false\n" + audit_config_hcl(self.settings)
        )

    def _initialize(self) -> None:
        """Node 1 is initialised; the others join it, then are unsealed with its key."""
        if self.index == 0:
            super()._initialize()
            return
        if not self._joined:
            leader = f"http://{HOST}:{node_ports(self.settings, 0)[0]}"
            answer = self._call("PUT", "sys/storage/raft/join", {"leader_api_addr": leader})
            if not answer.get("joined"):
                raise StackError(f"{self.name}: could not join the raft cluster of {leader}")
            self._joined = True
        self._unseal(joining=True)

    def _unseal(self, joining: bool = False) -> None:
        if not joining:
            super()._unseal()
            return
        # a joining node answers "sealed" until raft has brought it in: the wait loop
        # asks again (the key is only needed once the join's challenge is answered)
        key = self.settings.vault_unseal_key_file.read_text().strip()
        self._call("PUT", "sys/unseal", {"key": key})
        time.sleep(0.2)

    def status(self) -> dict[str, Any]:
        """This node's own view: sealed, standby, initialised (sys/health)."""
        try:
            code, body = _get(f"{self.api_url}/v1/sys/health?standbyok=false", timeout=1)
        except (urllib.error.URLError, OSError):
            return {"reachable": False}
        body = body if isinstance(body, dict) else {}
        return {"reachable": True, "code": code, **body}

    def role(self) -> str:
        """active, standby, sealed, uninitialised or down (from its health answer)."""
        if self.pid() is None:
            return "down"
        st = self.status()
        if not st.get("reachable"):
            return "not answering"
        return {200: "active", 429: "standby", 503: "sealed", 501: "uninitialised"}.get(
            int(st.get("code", 0)), f"http {st.get('code')}"
        )


class VaultFront(Server):
    """HAProxy on ORDERS_VAULT_PORT in front of the three nodes (health-checked)."""

    def __init__(self, settings: StackSettings, nodes: list[VaultNode]) -> None:
        self.prefix = ha_dir(settings) / "front"
        super().__init__(
            "vault-front",
            settings,
            {"api": settings.vault_port},
            expect=str(self.prefix),
            port_vars={"api": "ORDERS_VAULT_PORT"},
        )
        self.nodes = nodes

    def config(self) -> str:
        user = "  user nobody\n  group nogroup\n" if _is_root() else ""
        servers = "".join(f"  server {n.name} {HOST}:{n.ports['api']} check\n" for n in self.nodes)
        return (
            "# written by orders_ops.vault_ha at each start; edit the code, not this file\n"
            "global\n"
            f"{user}"
            "  log stderr format short local0 notice\n"
            "  maxconn 2048\n"
            "defaults\n"
            "  mode tcp\n"
            "  log global\n"
            "  timeout connect 1s\n"
            "  timeout client 10m\n"
            "  timeout server 10m\n"
            "  timeout check 1s\n"
            "  retries 2\n"
            "  option redispatch\n"
            "frontend vault\n"
            f"  bind {HOST}:{self.settings.vault_port}\n"
            "  default_backend openbao\n"
            "backend openbao\n"
            "  balance leastconn\n"
            "  option httpchk\n"
            # the active node only (standbys answer 429): read-after-write stays consistent
            "  http-check send meth GET uri /v1/sys/health\n"
            "  http-check expect status 200\n"
            # out after two missed checks (about 1 s), back after one; cut its connections
            "  default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions\n"
            f"{servers}"
        )

    def _launch(self) -> None:
        ensure_haproxy()
        prefix = private_dir(self.prefix)
        conf = prefix / "haproxy.cfg"
        write_private(conf, self.config())
        check = subprocess.run(
            [HAPROXY, "-c", "-q", "-f", str(conf)],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if check.returncode != 0:
            raise StackError(f"haproxy refused its config {conf}: {check.stderr.strip()[-600:]}")
        # -db: stay in the foreground, so the PID we record is the proxy's
        self._spawn([HAPROXY, "-db", "-f", str(conf)], env=child_env())

    def healthy(self) -> bool:
        try:
            code, _ = _get(f"{self.settings.vault_addr}/v1/sys/health", timeout=2)
        except (TimeoutError, urllib.error.URLError, OSError):
            return False
        return code == 200


@dataclass
class Peer:
    node_id: str
    address: str
    leader: bool
    voter: bool


class VaultCluster(Server):
    """The HA Vault as the stack sees it (``stack.vault``): three nodes and the front.

    Starts, stops and reports them together; ``pid()`` is the front's (the process
    clients talk to); :meth:`active_node` is the node that leads now.
    """

    persistent = True
    """Its Transit keys and leases survive a restart (fault tests rely on it)."""

    ha = True

    def __init__(self, settings: StackSettings) -> None:
        self.nodes = [VaultNode(settings, i) for i in range(NODES)]
        self.front = VaultFront(settings, self.nodes)
        super().__init__("vault", settings, {}, expect="")
        self.ports = {"api": settings.vault_port}
        self.initialized_now = False

    @property
    def members(self) -> list[Server]:
        return [*self.nodes, self.front]

    @property
    def address(self) -> str:
        nodes = ", ".join(f"{n.name} {HOST}:{n.ports['api']}" for n in self.nodes)
        return f"front {HOST}:{self.settings.vault_port} -> {nodes}"

    @property
    def log_file(self) -> Path:
        return self.front.log_file

    def pid(self) -> int | None:
        return self.front.pid()

    def busy_ports(self) -> list[str]:
        return [line for m in self.members if m.pid() is None for line in m.busy_ports()]

    def healthy(self) -> bool:
        return self.front.pid() is not None and self.front.healthy() and self.leader() is not None

    def _check_state_folder(self) -> None:
        single = self.settings.state_dir / "vault" / "data"
        if single.is_dir() and any(single.iterdir()):
            raise StackError(
                f"{self.settings.state_dir} holds a single-node Vault ({single}): HA mode "
                f"({HA_ENV}=1) needs a state folder of its own (set ORDERS_STATE_DIR to another "
                "folder), or 'orders-stack reset' deletes this one"
            )

    def start(self, timeout: float) -> bool:
        """Start what is not running: node 1 (initialised when new), then nodes 2 and 3
        (joined when new), all unsealed, then the front. True when anything started."""
        self._check_state_folder()
        private_dir(ha_dir(self.settings))
        self.initialized_now = False  # by this start (see Vault.start)
        started = False
        for node in self.nodes:
            if node.start(timeout):
                started = True
            elif not node.healthy():  # running but sealed: unseal it
                node.wait_ready(timeout)
            if node.index == 0 and node.initialized_now:  # before the others join
                self._tune_autopilot()
        self.initialized_now = self.nodes[0].initialized_now
        started = self.front.start(timeout) or started
        self.wait_ready(timeout)
        self._wait_voters(timeout)
        return started

    def _tune_autopilot(self) -> None:
        """Autopilot makes a joined node a voter once it has been healthy this long
        (default 10 s); until then the cluster tolerates no failure. Loopback is stable:
        2 s. Needs the root token, which node 1's initialisation wrote."""
        body = json.dumps({"server_stabilization_time": STABILIZATION}).encode()
        request = urllib.request.Request(  # noqa: S310 (loopback URL we built)
            f"{self.nodes[0].api_url}/v1/sys/storage/raft/autopilot/configuration",
            method="POST",
            data=body,
            headers={"X-Vault-Token": self.settings.root_token()},
        )
        deadline = time.monotonic() + 10
        while True:  # a node just unsealed may still be taking leadership
            try:
                with urllib.request.urlopen(request, timeout=5):  # noqa: S310
                    return
            except (urllib.error.URLError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise StackError(
                        f"vault-1: could not configure raft autopilot ({exc}); log "
                        f"{self.nodes[0].log_file}"
                    ) from None
                time.sleep(0.2)

    def _wait_voters(self, timeout: float) -> None:
        """Until every node is a raft voter: only then does losing one leave a quorum."""
        deadline = time.monotonic() + timeout
        peers: list[Peer] = []
        while time.monotonic() < deadline:
            with_error = False
            try:
                peers = self.peers()
            except StackError:
                with_error = True
            if not with_error and len(peers) == NODES and all(p.voter for p in peers):
                return
            time.sleep(0.25)
        names = ", ".join(f"{p.node_id} ({'voter' if p.voter else 'non-voter'})" for p in peers)
        raise StackError(
            f"vault (HA): not all {NODES} nodes became raft voters within {timeout:.0f}s "
            f"(peers: {names or 'none'}); logs in {self.settings.log_dir}/vault-*.log"
        )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            time.sleep(0.1)
        raise StackError(
            f"vault (HA) had no active node behind its front after {timeout:.0f}s "
            f"({self.address}). Front log {self.front.log_file}:\n{_tail(self.front.log_file)}"
        )

    def stop(self, timeout: float = 15.0) -> bool:
        stopped = False
        for member in reversed(self.members):
            stopped = member.stop(timeout) or stopped
        return stopped

    # -- what the cluster looks like now -------------------------------------

    def leader(self) -> VaultNode | None:
        """The node that answers as active, if one does."""
        for node in self.nodes:
            if node.pid() is not None and node.status().get("code") == 200:
                return node
        return None

    def active_node(self) -> VaultNode | None:
        return self.leader()

    def peers(self) -> list[Peer]:
        """The raft configuration as the cluster holds it (root token; any live node)."""
        token = self.settings.root_token()
        last: str = "no node answered"
        for node in self.nodes:
            if node.pid() is None:
                continue
            try:
                code, body = _get(
                    f"{node.api_url}/v1/sys/storage/raft/configuration", token=token, timeout=3
                )
            except (urllib.error.URLError, OSError) as exc:
                last = f"{node.name}: {type(exc).__name__}"
                continue
            if code != 200 or not isinstance(body, dict):
                last = f"{node.name}: HTTP {code}"
                continue
            servers = body["data"]["config"]["servers"]
            return [
                Peer(s["node_id"], s["address"], bool(s.get("leader")), bool(s.get("voter")))
                for s in servers
            ]
        raise StackError(f"vault (HA): could not read the raft configuration ({last})")

    def status_lines(self) -> list[str]:
        """What ``orders-stack status`` prints under the table."""
        try:
            peers = self.peers()
        except (StackError, OSError) as exc:
            return [f"vault raft: {exc}"]
        leader = next((p for p in peers if p.leader), None)
        lines = [
            f"vault raft: {len(peers)} peer(s), leader "
            + (f"{leader.node_id} ({leader.address})" if leader else "none")
        ]
        for p in peers:
            role = "leader" if p.leader else "follower"
            lines.append(
                f"  {p.node_id:<16} {p.address:<18} {role}{'' if p.voter else ' (non-voter)'}"
            )
        return lines
