"""checkov over the rendered manifests and the Dockerfiles: no failed check, every skip reasoned.

checkov runs once per framework over everything (it is slow to start), in the
session fixtures of conftest.py.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from orders_shared.catalog import SERVICES

if TYPE_CHECKING:
    from conftest import CheckovReport

DIGEST_SKIP = (
    "image is pinned by tag in development (Tilt/kind); production values set image.digest"
)
DEV_ONLY_TAG = "development-only server from a public tag; not deployed to production"


def _skips(report: CheckovReport) -> Counter[tuple[str, str]]:
    return Counter(
        (s["check_id"], s["check_result"].get("suppress_comment", "")) for s in report.skipped
    )


def test_rendered_manifests_fail_no_checkov_check(checkov_kubernetes: CheckovReport) -> None:
    failed = sorted(
        f"{f['check_id']} {f['resource']} ({f['file_path']})" for f in checkov_kubernetes.failed
    )
    assert failed == []
    assert checkov_kubernetes.passed > 1000


def test_every_kubernetes_skip_is_one_of_the_reasoned_ones(
    checkov_kubernetes: CheckovReport,
) -> None:
    assert _skips(checkov_kubernetes) == Counter(
        {
            # default values only: every worker of the catalog, the codec server, the
            # bootstrap Job, its drift-check CronJob and the session watchdog (a scaffolded
            # service adds its chart)
            ("CKV_K8S_43", DIGEST_SKIP): len(SERVICES) + 4,
            # dev-deps: temporal, openbao, postgres
            ("CKV_K8S_43", DEV_ONLY_TAG): 3,
            (
                "CKV_K8S_35",
                "the dev server reads its root token only from BAO_DEV_ROOT_TOKEN_ID; "
                "development only",
            ): 1,
            (
                "CKV_K8S_38",
                "Vault's kubernetes auth uses its own ServiceAccount token for TokenReview",
            ): 1,
        }
    )


def test_production_values_need_no_skip(checkov_kubernetes: CheckovReport) -> None:
    production = [s for s in checkov_kubernetes.skipped if ".production." in s["file_path"]]
    assert production == []


def test_dockerfiles_fail_no_checkov_check(checkov_dockerfile: CheckovReport) -> None:
    assert [f"{f['check_id']} {f['file_path']}" for f in checkov_dockerfile.failed] == []
    assert _skips(checkov_dockerfile) == Counter(
        {
            (
                "CKV_DOCKER_2",
                "Kubernetes probes the HTTP health endpoints (the bootstrap Job: its exit code); "
                "Docker HEALTHCHECK is ignored there",
            ): 1,
            (
                "CKV_DOCKER_7",
                "the base is the BASE_IMAGE argument, pinned by digest by default "
                "(tests/deploy checks the pin)",
            ): 1,
        }
    )
