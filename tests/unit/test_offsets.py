"""PartitionOffsets: the committable watermark, whatever order records finish in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.offsets import PartitionOffsets


def _reading(*offsets: int) -> PartitionOffsets:
    po = PartitionOffsets()
    for offset in offsets:
        po.read(offset)
    return po


# ---- before and after the first read ----


def test_fresh_tracker_has_nothing_to_commit() -> None:
    po = PartitionOffsets()
    assert po.committable is None
    assert po.needs_commit() is None
    assert po.outstanding == 0
    assert po.last_read is None
    assert po.committed is None


def test_one_read_unfinished_commits_that_offset() -> None:
    po = _reading(42)
    assert po.committable == 42
    assert po.outstanding == 1
    assert po.last_read == 42
    # 42 is where reading started, i.e. where the group already stands: it counts as
    # committed, so there is nothing worth committing yet
    assert po.committed == 42
    assert po.needs_commit() is None


def test_the_start_position_is_not_committed_again() -> None:
    po = _reading(42, 43)
    assert po.needs_commit() is None
    po.finish(43)  # out of order: watermark still at the start
    assert po.needs_commit() is None
    po.finish(42)
    assert po.needs_commit() == 44


def test_a_commit_recorded_before_the_first_read_is_kept() -> None:
    po = PartitionOffsets()
    po.mark_committed(7)
    po.read(9)
    assert po.committed == 7
    assert po.needs_commit() == 9


def test_one_read_finished_commits_one_past_it() -> None:
    po = _reading(42)
    po.finish(42)
    assert po.committable == 43
    assert po.outstanding == 0


# ---- finishing in any order ----


def test_in_order_finishes_move_the_watermark_one_by_one() -> None:
    po = _reading(10, 11, 12, 13)
    assert po.committable == 10
    po.finish(10)
    assert po.committable == 11
    po.finish(11)
    assert po.committable == 12
    po.finish(12)
    assert po.committable == 13
    po.finish(13)
    assert po.committable == 14
    assert po.outstanding == 0


def test_out_of_order_finish_holds_watermark_at_first_unfinished() -> None:
    po = _reading(0, 1, 2, 3, 4)
    po.finish(3)
    po.finish(1)
    po.finish(4)
    assert po.committable == 0
    assert po.outstanding == 5
    po.finish(0)
    assert po.committable == 2  # 0 and 1 done, 2 not
    assert po.outstanding == 3
    po.finish(2)
    assert po.committable == 5  # 3 and 4 were already done
    assert po.outstanding == 0


def test_reverse_order_finish_jumps_at_the_end() -> None:
    po = _reading(*range(100, 110))
    for offset in reversed(range(101, 110)):
        po.finish(offset)
        assert po.committable == 100
    po.finish(100)
    assert po.committable == 110
    assert po.outstanding == 0


def test_finish_many_equals_individual_finishes() -> None:
    po = _reading(5, 6, 7, 8, 9)
    po.finish_many([9, 7, 5])
    assert po.committable == 6
    assert po.outstanding == 4
    po.finish_many(iter([6]))  # any iterable, e.g. a generator
    assert po.committable == 8
    po.finish_many([])
    assert po.committable == 8
    po.finish_many([8])
    assert po.committable == 10


def test_read_many_equals_individual_reads() -> None:
    one, many = PartitionOffsets(), PartitionOffsets()
    for offset in (10, 11, 13):
        one.read(offset)
    many.read_many([10, 11, 13])
    many.read_many([])
    assert (many.committable, many.outstanding, many.last_read, many.committed) == (
        one.committable,
        one.outstanding,
        one.last_read,
        one.committed,
    )
    with pytest.raises(ValueError, match="offset 13 read after 13"):
        many.read_many([13, 14])


def test_finish_many_of_the_head_in_order_then_out_of_order() -> None:
    po = _reading(1, 2, 3, 4, 5, 6)
    po.finish_many([1, 2, 4])  # the head goes at once; 4 waits for 3
    assert po.committable == 3
    assert po.outstanding == 4
    po.finish_many([3])
    assert po.committable == 5
    po.finish_many([6, 5])
    assert po.committable == 7
    assert po.outstanding == 0


def test_finishing_twice_is_harmless() -> None:
    po = _reading(1, 2, 3)
    po.finish(2)
    po.finish(2)
    po.finish(1)
    po.finish(1)
    assert po.committable == 3
    assert po.outstanding == 1
    po.finish(3)
    assert po.committable == 4
    po.finish(2)  # after the watermark passed it: it once stayed counted as finished
    assert po.finished_uncommitted == 3


# ---- gaps (compaction, transaction markers) ----


def test_gaps_between_offsets() -> None:
    po = _reading(3, 7, 20, 21, 50)
    po.finish(3)
    assert po.committable == 7  # the next record read, not 4
    po.finish(20)
    assert po.committable == 7
    po.finish(7)
    assert po.committable == 21
    po.finish(50)
    assert po.committable == 21
    po.finish(21)
    assert po.committable == 51
    assert po.last_read == 50


def test_read_must_grow() -> None:
    po = _reading(5)
    with pytest.raises(ValueError, match="offset 5 read after 5"):
        po.read(5)
    with pytest.raises(ValueError, match="offset 4 read after 5"):
        po.read(4)
    # the refused reads changed nothing
    assert po.committable == 5
    assert po.outstanding == 1
    assert po.last_read == 5


def test_read_must_grow_even_after_everything_finished() -> None:
    po = _reading(5, 6)
    po.finish_many([5, 6])
    with pytest.raises(ValueError, match="read after 6"):
        po.read(6)
    po.read(9)
    assert po.committable == 9


def test_reads_after_a_drained_prefix() -> None:
    po = _reading(0, 1)
    po.finish_many([0, 1])
    assert po.committable == 2
    po.read(2)
    po.read(5)
    assert po.committable == 2
    po.finish(5)
    assert po.committable == 2
    po.finish(2)
    assert po.committable == 6


# ---- needs_commit and mark_committed ----


def test_needs_commit_only_when_the_watermark_moved_past_the_last_commit() -> None:
    po = _reading(0, 1, 2)
    assert po.committed == 0  # the start position
    assert po.needs_commit() is None
    po.finish(1)  # out of order: watermark stays at 0
    assert po.needs_commit() is None
    po.finish(0)
    assert po.committable == 2
    assert po.needs_commit() == 2
    po.mark_committed(2)
    assert po.needs_commit() is None
    po.finish(2)
    assert po.needs_commit() == 3
    po.mark_committed(3)
    assert po.needs_commit() is None
    assert po.committed == 3


def test_needs_commit_never_goes_backwards() -> None:
    # a commit recorded ahead of the watermark (e.g. restored position) wins
    po = _reading(10, 11)
    po.mark_committed(50)
    assert po.needs_commit() is None
    po.finish_many([10, 11])
    assert po.committable == 12
    assert po.needs_commit() is None


def test_needs_commit_does_not_mark_anything() -> None:
    po = _reading(0)
    po.finish(0)
    assert po.needs_commit() == 1
    assert po.needs_commit() == 1
    assert po.committed == 0


# ---- property: watermark = one past the longest finished prefix ----


@st.composite
def reads_and_finishes(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    start = draw(st.integers(min_value=0, max_value=10**12))
    gaps = draw(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=60))
    offsets: list[int] = []
    current = start
    for gap in gaps:
        offsets.append(current)
        current += gap
    chosen = draw(st.lists(st.sampled_from(offsets), unique=True, max_size=len(offsets)))
    return offsets, draw(st.permutations(chosen))


def _expected_watermark(offsets: list[int], finished: set[int]) -> int:
    for offset in offsets:
        if offset not in finished:
            return offset
    return offsets[-1] + 1


@settings(max_examples=300, deadline=None)
@given(reads_and_finishes())
def test_property_watermark_is_one_past_the_longest_finished_prefix(
    case: tuple[list[int], list[int]],
) -> None:
    offsets, finish_order = case
    po = PartitionOffsets()
    for offset in offsets:
        po.read(offset)
    finished: set[int] = set()
    previous = po.committable
    assert previous == offsets[0]
    for offset in finish_order:
        po.finish(offset)
        finished.add(offset)
        expected = _expected_watermark(offsets, finished)
        assert po.committable == expected
        # the watermark never moves backwards and nothing below it is unfinished
        assert previous is not None
        assert expected >= previous
        assert all(o in finished for o in offsets if o < expected)
        previous = expected
    expected_outstanding = len(offsets) - offsets.index(previous) if previous in offsets else 0
    assert po.outstanding == expected_outstanding


@settings(max_examples=200, deadline=None)
@given(reads_and_finishes(), st.integers(min_value=1, max_value=8))
def test_property_interleaved_reads_and_batched_finishes(
    case: tuple[list[int], list[int]], chunk: int
) -> None:
    """Reads keep coming while earlier records finish in chunks (finish_many)."""
    offsets, finish_order = case
    po = PartitionOffsets()
    read_so_far: list[int] = []
    finished: set[int] = set()
    pending = list(finish_order)
    for offset in offsets:
        po.read(offset)
        read_so_far.append(offset)
        ready = [o for o in pending if o in set(read_so_far)][:chunk]
        po.finish_many(ready)
        finished.update(ready)
        pending = [o for o in pending if o not in finished]
        assert po.committable == _expected_watermark(read_so_far, finished)
        assert po.last_read == offset
    po.finish_many(pending)
    finished.update(pending)
    assert po.committable == _expected_watermark(offsets, finished)


@settings(max_examples=100, deadline=None)
@given(reads_and_finishes())
def test_property_needs_commit_reports_each_advance_once(
    case: tuple[list[int], list[int]],
) -> None:
    offsets, finish_order = case
    po = PartitionOffsets()
    for offset in offsets:
        po.read(offset)
    assert po.needs_commit() is None  # the start position counts as committed
    assert po.committed == offsets[0]
    commits: list[int] = [offsets[0]]
    for offset in finish_order:
        po.finish(offset)
        target = po.needs_commit()
        if target is not None:
            assert target > commits[-1]
            assert target == po.committable
            po.mark_committed(target)
            commits.append(target)
        assert po.needs_commit() is None
    assert commits[-1] == po.committable


def test_finishing_an_offset_before_it_is_read_does_not_finish_the_later_read() -> None:
    po = _reading(5)
    po.finish(6)  # a stray finish (e.g. a stale delivery result) for an offset not read yet
    po.read(6)
    po.finish(5)
    # 6 was read after the stray finish and has not been delivered: it must hold the watermark
    assert po.committable == 6
    assert po.outstanding == 1
