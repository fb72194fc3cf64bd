"""Decoding payloads on kind (issue: Kubernetes delivery that works on the first real
tilt up). Nothing on kind gives the browser UI a reader's token, so a UI wired to the
codec server would get 401 for every decode: the kind UI has no codec endpoint, the
codec server is forwarded for the temporal CLI, and docs/deployment.md says how to get
a reader's token for it. These checks keep that true to the charts and the Tiltfile.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from orders_ops.policies import PAYLOAD_READER_POLICY, all_policies

if TYPE_CHECKING:
    from conftest import Rendered

ROOT = Path(__file__).resolve().parents[2]

DOC = (ROOT / "docs" / "deployment.md").read_text()
SECTION = DOC[DOC.index("### Reading payloads on kind") :].split("\n## ", 1)[0]


def _temporal_args(rendered: dict[tuple[str, str], Rendered]) -> list[str]:
    temporal = next(
        d
        for d in rendered[("dev-deps", "default")].of_kind("Deployment")
        if d["metadata"]["name"] == "temporal"
    )
    (container,) = temporal["spec"]["template"]["spec"]["containers"]
    args: list[str] = container["args"]
    return args


def test_the_kind_ui_is_not_wired_to_a_codec_it_cannot_authenticate_to(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    assert not [a for a in _temporal_args(rendered) if a.startswith("--ui-codec")]
    # and the codec server on kind is the cluster one: no local mode, which is the only
    # mode that answers a caller without a token
    env = {
        e["name"]: e.get("value")
        for e in rendered[("codec-server", "default")].one("Deployment")["spec"]["template"][
            "spec"
        ]["containers"][0]["env"]
    }
    assert not [k for k in env if "LOCAL" in k]


def _forwards(tilt_cluster: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for call in tilt_cluster.named("k8s_resource"):
        name = call.kwargs.get("new_name", call.args[0] if call.args else None)
        out[str(name)] = list(call.kwargs.get("port_forwards", []))
    return out


def test_the_documented_cli_path_uses_what_tilt_forwards_and_the_reader_policy(
    tilt_cluster: Any, rendered: dict[tuple[str, str], Rendered]
) -> None:
    forwards = _forwards(tilt_cluster)
    codec_port = forwards["codec-server"][0].split(":")[0]
    assert f"--codec-endpoint http://localhost:{codec_port}" in SECTION
    assert "7233:7233" in forwards["temporal"]
    assert "--address localhost:7233" in SECTION
    vault_port = forwards["openbao"][0].split(":")[0]
    assert f"http://localhost:{vault_port}/v1/auth/token/create" in SECTION
    assert '--codec-auth "Bearer $READER"' in SECTION
    # the policy exists (the bootstrap writes every policy of all_policies) and reads payloads
    assert f'"policies":["{PAYLOAD_READER_POLICY}"]' in SECTION
    assert "decrypt" in all_policies()[PAYLOAD_READER_POLICY]
    # the token in the command is the dev OpenBao's root token from helm/dev-deps
    values: dict[str, Any] = yaml.safe_load((ROOT / "helm/dev-deps/values.yaml").read_text())
    token = values["adminSecret"]["vaultRootToken"]
    assert re.search(rf'X-Vault-Token: {re.escape(token)}"', SECTION)
    openbao = next(
        d
        for d in rendered[("dev-deps", "default")].of_kind("Deployment")
        if d["metadata"]["name"] == "openbao"
    )
    assert "dev" in " ".join(openbao["spec"]["template"]["spec"]["containers"][0]["args"])
