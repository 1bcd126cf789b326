"""Which event a batch's 400 is about, for as few requests as the key's budget allows.

Pure: the delivery module sends what `probe()` asks for and reports each answer.

A 400 on a batch says at least one of its events is refused. If the answer
names the refused events (`rejected: [index, ...]` or `errors: [{"index": i}]`,
as the simulator answers), they are taken as named: no further request. The
rest is handed back, unsent, to go out with the partition's next events in one
full request.

Otherwise the first refused event is found by testing one half and inferring
the other: send the left half of the segment known to hold a refused event; a
200 delivers it and leaves the refusal in the right half without sending that;
a 400 narrows the search to the left half. Only ever a prefix of what is left
is sent, so the partition's order holds. A lone event is dead-lettered only
once the API has refused it alone: one reached by inference is sent alone to
confirm, so a 400 that was not about any one event loses nothing. For a batch
of 100 that is the failed request, at most 7 halves and 1 confirmation: 9
requests. What comes after the refused event was never sent whole and is
handed back, unsent, for the next request, topped up with newer events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic

import orjson

from consumer.batching import Item, Ref


def named_indices(body: bytes, size: int) -> list[int] | None:
    """The refused events a 400 answer names, if it names them all plainly; else None."""
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    found: list[Any] | None = None
    rejected = doc.get("rejected")
    if isinstance(rejected, list):
        found = rejected
    else:
        errors = doc.get("errors")
        if isinstance(errors, list) and all(isinstance(e, dict) for e in errors):
            found = [e.get("index") for e in errors]
    if not found:
        return None
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < size for i in found):
        return None
    indices = sorted(set(found))
    return indices if len(indices) < size else None  # "all of them" tells nothing


@dataclass(slots=True)
class Isolation(Generic[Ref]):
    """The search over one refused batch; `done` once every event has a fate."""

    items: list[Item[Ref]]
    status: int  # the refusing answer's status and body, for the DLQ
    detail: str
    accepted: list[Item[Ref]] = field(default_factory=list)
    rejected: list[tuple[Item[Ref], int, str]] = field(default_factory=list)
    unsent: list[Item[Ref]] = field(default_factory=list)
    requests: int = 0
    done: bool = False
    _lo: int = 0
    _hi: int = 0
    _probe: tuple[int, int] | None = None

    @classmethod
    def start(cls, items: list[Item[Ref]], status: int, body: bytes, detail: str) -> Isolation[Ref]:
        """The search after `items` were refused with `status` and the answer `body`."""
        search = cls(items, status, detail, _hi=len(items))
        named = named_indices(body, len(items)) if len(items) > 1 else None
        if named is not None:
            chosen = set(named)
            search.rejected = [(items[i], status, detail) for i in named]
            search.unsent = [item for i, item in enumerate(items) if i not in chosen]
            search.done = True
        return search

    def probe(self) -> list[Item[Ref]] | None:
        """The events to send next (a prefix of the segment under search), or None when done."""
        if self.done:
            return None
        lo, hi = self._lo, self._hi
        mid = hi if hi - lo == 1 else lo + (hi - lo + 1) // 2
        self._probe = (lo, mid)
        return self.items[lo:mid]

    def answer(self, ok: bool, status: int = 200, detail: str = "") -> None:
        """The API's answer to the last probe: `ok` (200), or a refusal's status and body."""
        assert self._probe is not None, "answer() without probe()"
        lo, mid = self._probe
        self._probe = None
        self.requests += 1
        alone = mid - lo == 1
        if ok:
            self.accepted.extend(self.items[lo:mid])
            if alone and mid == self._hi:  # a confirmation that came back 200: no refusal here
                self._finish(after=mid)
                return
            self._lo = mid  # the refusal is in what is left: inferred, not sent
        else:
            self.status, self.detail = status, detail or self.detail
            if alone:  # refused on its own: certain
                self.rejected.append((self.items[lo], self.status, self.detail))
                self._finish(after=mid)
                return
            self._hi = mid

    def _finish(self, after: int) -> None:
        self.unsent = self.items[after:]
        self.done = True
