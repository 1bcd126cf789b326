"""Walking librdkafka's statistics report (the JSON its `stats_cb` gets)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


def partition_reports(doc: Mapping[str, Any]) -> Iterator[tuple[str, int, Mapping[str, Any]]]:
    """(topic, partition, its report) for every real partition in one report; librdkafka's
    internal "unassigned" partition (-1) and anything malformed are left out."""
    topics = doc.get("topics")
    if not isinstance(topics, dict):
        return
    for topic, tdoc in topics.items():
        parts = tdoc.get("partitions") if isinstance(tdoc, dict) else None
        if not isinstance(parts, dict):
            continue
        for pdoc in parts.values():
            if not isinstance(pdoc, dict):
                continue
            partition = pdoc.get("partition")
            if isinstance(partition, int) and not isinstance(partition, bool) and partition >= 0:
                yield str(topic), partition, pdoc
