"""Names the daemon's layers share: event kinds, message directions, the dead-letter sources
that are not sinks (and so are names no sink may take), the built-in sink types.

Imports nothing else of the daemon (tests/test_layers.py holds it to that).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BUILTIN_SINK_TYPES",
    "DEAD_LETTER_SOURCES",
    "DIRECTIONS",
    "KINDS",
    "RESERVED_SINK_NAMES",
]

#: every event kind an event decodes to (events.py), in the order metrics list them
KINDS: Final = ("batch", "inbound", "outbound", "optout", "optin", "other")
#: a message's direction as RingCentral writes it
DIRECTIONS: Final = ("Inbound", "Outbound")
#: where dead letters come from besides a sink's refusals (journal.queue_dead_letter callers)
DEAD_LETTER_SOURCES: Final = ("frame", "notification", "backfill")
#: names no configured sink may take: the dead-letter sources that are not sinks
RESERVED_SINK_NAMES: Final = frozenset(DEAD_LETTER_SOURCES)
#: the sink types a2pd ships (sinks/__init__.py registers them; observe.py declares their
#: counters)
BUILTIN_SINK_TYPES: Final = frozenset({"stdout", "file", "http", "redis", "postgres"})
