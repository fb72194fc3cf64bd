"""Where an order's time goes, from a history: offline, on a made-up history."""

from __future__ import annotations

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from orders_ops.bench_scaling import spans, summarize_spans

E = EventType


def _event(event_id: int, kind: int, at: float, **attrs: object) -> HistoryEvent:
    e = HistoryEvent(event_id=event_id, event_type=kind)  # type: ignore[arg-type]
    e.event_time.FromNanoseconds(int(at * 1e9))
    for name, fields in attrs.items():
        getattr(e, name).MergeFrom(type(getattr(e, name))(**fields))  # type: ignore[arg-type]
    return e


def _history() -> list[HistoryEvent]:
    """A workflow task (0.01 s queued, 0.02 s running), then activity charge_payment
    (0.1 s queued, 0.3 s running), then a closing workflow task (0.005 s, 0.015 s)."""
    sched = "activity_task_scheduled_event_attributes"
    return [
        _event(1, E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED, 100.0),
        _event(2, E.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, 100.0),
        _event(
            3,
            E.EVENT_TYPE_WORKFLOW_TASK_STARTED,
            100.01,
            **{"workflow_task_started_event_attributes": {"scheduled_event_id": 2}},
        ),
        _event(
            4,
            E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
            100.03,
            **{"workflow_task_completed_event_attributes": {"scheduled_event_id": 2}},
        ),
        _event(
            5,
            E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
            100.03,
            **{sched: {"activity_type": {"name": "charge_payment"}}},
        ),
        _event(
            6,
            E.EVENT_TYPE_ACTIVITY_TASK_STARTED,
            100.13,
            **{"activity_task_started_event_attributes": {"scheduled_event_id": 5}},
        ),
        _event(
            7,
            E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
            100.43,
            **{"activity_task_completed_event_attributes": {"scheduled_event_id": 5}},
        ),
        _event(8, E.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, 100.43),
        _event(
            9,
            E.EVENT_TYPE_WORKFLOW_TASK_STARTED,
            100.435,
            **{"workflow_task_started_event_attributes": {"scheduled_event_id": 8}},
        ),
        _event(
            10,
            E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
            100.45,
            **{"workflow_task_completed_event_attributes": {"scheduled_event_id": 8}},
        ),
        _event(11, E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, 100.45),
    ]


def test_spans_pair_each_task_with_its_own_schedule_and_start() -> None:
    got = [(w, round(a, 3), round(b, 3)) for w, a, b in spans(_history())]
    assert got == [
        ("workflow task", 0.01, 0.02),
        ("activity charge_payment", 0.1, 0.3),
        ("workflow task", 0.005, 0.015),
    ]


def test_summary_accounts_for_the_whole_order() -> None:
    found = summarize_spans([spans(_history())], [0.45])
    rows = {r["what"]: r for r in found["rows"]}
    assert rows["workflow task"]["per_order"] == 2
    assert rows["workflow task"]["mean_ms_per_order_queued"] == 15.0
    assert rows["activity charge_payment"]["start_to_close_ms"] == {"p50": 300.0, "p95": 300.0}
    # 450 ms: 15 + 35 in workflow tasks, 100 + 300 in the activity, nothing between
    assert found["in_tasks_ms_mean"] == 450.0
    assert found["between_tasks_ms_mean"] == 0.0
