"""A fetch from Kafka as the ledger takes it: runs of one partition, each with every offset
read, its valid events as batch items, and its poison in read order; and where a
partition was read to its end (librdkafka's end-of-partition event).

Pure: messages in (confluent-kafka `Message`s, or anything with their methods),
runs out; no consumer, no ledger. librdkafka hands out records in runs of one
partition. A run with no error and no poison in it (the usual case) is built
column-wise, by `map` over C functions: only the decoder runs Python code per
record. Anything else goes record by record. This is most of the worker's CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby, repeat
from operator import attrgetter
from typing import Any, cast

from confluent_kafka import KafkaError, Message

from consumer.batching import Item
from consumer.events import Poison, Route, Valid

# C functions `map` can call without Python frames. Typed for records without an
# error (the only ones they are used on; a None value decodes to poison).
_M_PARTITION: Callable[[Message], int] = cast(Any, Message.partition)
_M_TOPIC: Callable[[Message], str] = cast(Any, Message.topic)
_M_ERROR = Message.error
_M_VALUE: Callable[[Message], bytes] = cast(Any, Message.value)
_M_OFFSET: Callable[[Message], int] = cast(Any, Message.offset)
_M_KEY: Callable[[Message], bytes | None] = cast(Any, Message.key)
_ROUTE = attrgetter("route")
_new_tuple = tuple.__new__
_EOF = KafkaError._PARTITION_EOF

Decode = Callable[[bytes | None], Valid | Poison]


@dataclass(slots=True)
class Run:
    """Consecutive records of one partition."""

    topic: str
    partition: int
    offsets: list[int] = field(default_factory=list)  # every record read, in order
    items: list[Item[Message]] = field(default_factory=list)  # the valid events
    nbytes: int = 0  # the valid events' bytes
    sessions: int = 0  # how many of them are session events
    poison: list[tuple[int, Message, Poison]] = field(default_factory=list)  # with offsets


@dataclass(slots=True)
class Fetched:
    """What one fetch held."""

    runs: list[Run] = field(default_factory=list)
    errors: list[KafkaError] = field(default_factory=list)
    # (topic, partition, offset): an owned partition read to its end, the offset its next
    # record will have
    ends: list[tuple[str, int, int]] = field(default_factory=list)


def split(
    messages: list[Message], decode: Decode, now: float, owned: Callable[[str, int], bool]
) -> Fetched:
    """The fetch as runs of the partitions `owned` says are ours, the errors it held and
    the ends it reached."""
    out = Fetched()
    for partition, group in groupby(messages, _M_PARTITION):
        batch = list(group)
        # a partition's end comes after its records: they stay a clean run
        cut = len(batch)
        while cut and _is_end(batch[cut - 1]):
            cut -= 1
        ends = batch[cut:]
        if ends:
            del batch[cut:]
        if batch:
            _partition(partition, batch, decode, now, owned, out, any(map(_M_ERROR, batch)))
        for end in ends:
            _take_end(end, owned, out)
    return out


def _partition(
    partition: int,
    batch: list[Message],
    decode: Decode,
    now: float,
    owned: Callable[[str, int], bool],
    out: Fetched,
    errors: bool,
) -> None:
    """Consecutive records of one partition: one run, column-wise when it is clean."""
    topics = set(map(_M_TOPIC, batch))
    if errors or len(topics) != 1:
        _by_record(batch, None, decode, now, owned, out)
        return
    (topic,) = topics
    if not owned(topic, partition):
        return  # stragglers from a partition no longer ours
    values = list(map(_M_VALUE, batch))
    decoded = list(map(decode, values))
    if any(map(isinstance, decoded, repeat(Poison))):
        _by_record(batch, decoded, decode, now, owned, out)
        return
    offsets = list(map(_M_OFFSET, batch))
    routes = list(map(_ROUTE, decoded))
    keys = map(_M_KEY, batch)
    items = list(
        map(_new_tuple, repeat(Item), zip(offsets, values, routes, batch, repeat(now), keys))
    )
    sessions = len(routes) - routes.count(Route.BATCH)
    out.runs.append(Run(topic, partition, offsets, items, sum(map(len, values)), sessions))


def _is_end(msg: Message) -> bool:
    err = msg.error()
    return err is not None and err.code() == _EOF


def _take_end(msg: Message, owned: Callable[[str, int], bool], out: Fetched) -> None:
    """An end-of-partition event, into `out.ends` when the partition is ours."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if (
        topic is not None
        and partition is not None
        and offset is not None
        and owned(topic, partition)
    ):
        out.ends.append((topic, partition, offset))


def _by_record(
    messages: list[Message],
    decoded: list[Valid | Poison] | None,
    decode: Decode,
    now: float,
    owned: Callable[[str, int], bool],
    out: Fetched,
) -> None:
    """Record by record: Kafka errors, poison, records of several topics, stragglers."""
    runs, errors = out.runs, out.errors
    batch_route = Route.BATCH
    run: Run | None = None
    mine = False
    for index, msg in enumerate(messages):
        err = msg.error()
        if err is not None:
            if err.code() == _EOF:
                _take_end(msg, owned, out)
            else:
                errors.append(err)
            continue
        topic, partition = msg.topic(), msg.partition()
        if run is None or partition != run.partition or topic != run.topic:
            run = Run(cast(str, topic), cast(int, partition))
            mine = owned(run.topic, run.partition)
            if mine:
                runs.append(run)
        if not mine:
            continue
        offset = cast(int, msg.offset())
        run.offsets.append(offset)
        value = msg.value()
        result = decode(value) if decoded is None else decoded[index]
        if isinstance(result, Poison):
            run.poison.append((offset, msg, result))
            continue
        if result.route is not batch_route:
            run.sessions += 1
        raw = cast(bytes, value)
        run.nbytes += len(raw)
        run.items.append(_new_tuple(Item, (offset, raw, result.route, msg, now, msg.key())))
