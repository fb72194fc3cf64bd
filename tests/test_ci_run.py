"""``.ci/run`` sees a fresh machine: ``make test`` runs with empty, private caches.

``make`` is replaced by a stub on ``PATH`` that records its arguments, the cache
variables it was given and what those folders held, so nothing is installed or run.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHES = ("UV_CACHE_DIR", "PIP_CACHE_DIR", "XDG_CACHE_HOME")

STUB = """#!/usr/bin/env python3
import json, os, sys
seen = {v: os.environ.get(v) for v in json.loads(os.environ["STUB_VARS"])}
listing = {v: sorted(os.listdir(p)) if p and os.path.isdir(p) else None for v, p in seen.items()}
with open(os.environ["STUB_OUT"], "w") as out:
    json.dump({"argv": sys.argv[1:], "env": seen, "listing": listing,
               "pip_config": os.environ.get("PIP_CONFIG_FILE")}, out)
"""


def test_ci_runs_make_test_with_empty_private_caches_removed_at_the_end(tmp_path: Path) -> None:
    stub = tmp_path / "bin" / "make"
    stub.parent.mkdir()
    stub.write_text(STUB)
    stub.chmod(0o755)
    used = tmp_path / "used-cache"  # a long-used machine's caches, which CI must not read
    used.mkdir()
    (used / "wheel-from-months-ago").write_text("x")
    env = {
        **os.environ,
        "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}",
        "STUB_OUT": str(tmp_path / "seen.json"),
        "STUB_VARS": json.dumps(CACHES),
        **{v: str(used) for v in CACHES},
    }
    done = subprocess.run(
        [ROOT / ".ci/run"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["argv"] == ["test"]
    for var in CACHES:
        folder = seen["env"][var]
        assert folder and folder != str(used), var
        assert seen["listing"][var] in (None, []), var  # empty (or not yet made) when make starts
    private = {Path(seen["env"][v]).parent for v in CACHES}
    assert len(private) == 1, private  # one private folder for all of them
    assert not private.pop().exists(), "the private cache folder is left behind"
    assert seen["pip_config"] == os.devnull
