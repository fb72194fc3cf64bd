"""Which PostgreSQL the stack runs, and what it refuses, with ORDERS_TLS on or off."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from orders_ops import postgres_tls
from orders_ops.settings import StackSettings


def _settings(tmp_path: Path, *, tls: bool) -> StackSettings:
    base = StackSettings(
        state_dir=tmp_path,
        temporal_port=1,
        temporal_ui_port=2,
        temporal_http_port=3,
        temporal_metrics_port=4,
        vault_port=5,
        postgres_port=6,
    )
    return dataclasses.replace(base, tls=tls)


def test_tls_runs_a_postgres_built_with_openssl(tmp_path: Path) -> None:
    def configure(tls: bool) -> str:
        pg_config = postgres_tls.bin_dir(_settings(tmp_path, tls=tls)) / "pg_config"
        return subprocess.run(
            [str(pg_config), "--configure"], capture_output=True, text=True, check=True
        ).stdout

    assert "'--with-openssl'" in configure(True)
    assert "'--with-openssl'" not in configure(False)  # why the TLS stack needs the other build


@pytest.mark.parametrize(("tls", "made_by"), [(True, "18"), (False, "17")])
def test_a_data_folder_of_the_other_build_is_refused_with_the_fix(
    tmp_path: Path, tls: bool, made_by: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "PG_VERSION").write_text(made_by + "\n")
    with pytest.raises(postgres_tls.PostgresTLSError, match=f"made by PostgreSQL {made_by}.*reset"):
        postgres_tls.check_data_version(_settings(tmp_path, tls=tls), data)
    (data / "PG_VERSION").write_text(postgres_tls.major_version(_settings(tmp_path, tls=tls)))
    postgres_tls.check_data_version(_settings(tmp_path, tls=tls), data)  # its own: accepted


def test_tls_writes_a_pg_hba_without_plain_tcp_lines(tmp_path: Path) -> None:
    postgres_tls.write_hba(_settings(tmp_path, tls=True), tmp_path, None)
    lines = [ln.split() for ln in (tmp_path / "pg_hba.conf").read_text().splitlines()]
    kinds = {ln[0] for ln in lines if ln and not ln[0].startswith("#")}
    assert kinds == {"local", "hostssl"}
    assert oct((tmp_path / "pg_hba.conf").stat().st_mode & 0o777) == "0o600"
