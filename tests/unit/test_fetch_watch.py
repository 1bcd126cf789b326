"""FetchWatch: which owned partitions librdkafka's statistics show never fetched."""

from __future__ import annotations

import orjson

from consumer.fetch_watch import FetchWatch, fetch_states

A, B = ("t", 0), ("t", 1)


def _report(**states: str) -> dict[str, object]:
    """A statistics report as librdkafka writes it (with its internal partition -1)."""
    parts = {"-1": {"partition": -1, "fetch_state": "none"}}
    for name, state in states.items():
        p = int(name[1:])
        parts[str(p)] = {"partition": p, "fetch_state": state, "consumer_lag": -1}
    doc: dict[str, object] = {"topics": {"t": {"topic": "t", "partitions": parts}}}
    return orjson.loads(orjson.dumps(doc))  # type: ignore[no-any-return]


def test_fetch_states_reads_each_partition_and_skips_the_internal_one() -> None:
    assert fetch_states(_report(p0="none", p1="active")) == {A: "none", B: "active"}
    assert fetch_states({"topics": "garbage"}) == {}
    assert fetch_states({}) == {}


def test_a_partition_not_fetching_is_stuck_only_once_a_report_shows_it_past_the_limit() -> None:
    watch = FetchWatch(stuck_after_s=15)
    owned = {A, B}
    assert watch.observe(fetch_states(_report(p0="none", p1="none")), owned, 0) == []
    assert watch.observe(fetch_states(_report(p0="none", p1="active")), owned, 5) == []
    assert watch.observe(fetch_states(_report(p0="none", p1="none")), owned, 10) == []
    # A has been so since 0; B only since 10 (it fetched in between)
    assert watch.observe(fetch_states(_report(p0="none", p1="none")), owned, 15) == [A]
    assert watch.observe(fetch_states(_report(p0="stopped", p1="none")), owned, 25) == [A, B]


def test_states_of_a_started_fetch_never_count() -> None:
    watch = FetchWatch(stuck_after_s=1)
    for state in ("active", "offset-query", "offset-wait", "validate-epoch-wait"):
        assert watch.observe({A: state}, {A}, 0) == []
        assert watch.observe({A: state}, {A}, 100) == []


def test_partitions_not_owned_or_not_reported_are_left_out() -> None:
    watch = FetchWatch(stuck_after_s=1)
    watch.observe({A: "none", B: "none"}, {A}, 0)
    assert watch.observe({A: "none", B: "none"}, {A}, 5) == [A]
    # B owned from now: its time starts now, not at the report that showed it unowned
    assert watch.observe({A: "none", B: "none"}, {A, B}, 6) == [A]
    assert watch.observe({}, {A, B}, 50) == []  # a report without them says nothing


def test_a_partition_assigned_again_gets_the_full_time_again() -> None:
    watch = FetchWatch(stuck_after_s=15)
    watch.observe({A: "none"}, {A}, 0)
    assert watch.observe({A: "none"}, {A}, 15) == [A]
    watch.assigned_again([A], 15)
    assert watch.observe({A: "none"}, {A}, 20) == []
    assert watch.observe({A: "none"}, {A}, 30) == [A]


def test_a_partition_let_go_and_assigned_again_starts_afresh() -> None:
    watch = FetchWatch(stuck_after_s=15)
    watch.observe({A: "none"}, {A}, 0)
    watch.forget([A])
    assert watch.observe({A: "none"}, {A}, 15) == []
    assert watch.observe({A: "none"}, {A}, 30) == [A]
