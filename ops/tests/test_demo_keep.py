"""`make demo KEEP=1` ends with where the UI is and what to try next (issue 25 item 9)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from orders_ops.demo import keep_hints
from orders_ops.settings import StackSettings


def test_the_keep_ending_names_the_ui_of_this_stack_and_what_to_try(tmp_path: Path) -> None:
    settings = dataclasses.replace(
        StackSettings.from_env(), state_dir=tmp_path, temporal_ui_port=28233
    )
    text = "\n".join(keep_hints(settings))
    # the UI of this stack's own port, not a default
    assert "Temporal UI: http://127.0.0.1:28233" in text
    # a next step for each thing a newcomer looks at, and how to stop
    for command in (
        'eval "$(make -s env)"',
        "orders submit examples/order.json --wait",
        "orders status example-0001",
        "temporal workflow list",
        "make down",
    ):
        assert command in text, command
    # the commands it names exist: the example order is in the repository
    assert (Path(__file__).parents[2] / "examples" / "order.json").is_file()
