"""Routes: which sinks an event goes to. Pure data and pure functions; no I/O.

Routes are evaluated in config order. Every route whose conditions all hold adds its sinks (an
event fans out to all of them, each sink once). A route with ``stop`` ends the evaluation when
it matches. When no route matched, the default route's sinks are used.
A condition names a field (see ``events.field_values``) and the values it accepts; a field
with several values (``to``) matches when any of them is accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from a2pd.events import Event, field_values

__all__ = [
    "ROUTABLE_FIELDS",
    "Route",
    "Router",
]

ROUTABLE_FIELDS = ("kind", "direction", "from", "to", "batchId", "status", "active")


@dataclass(frozen=True, slots=True)
class Route:
    """One rule: ``match`` maps a field name to the values it accepts."""

    name: str
    sinks: tuple[str, ...]
    match: Mapping[str, frozenset[str]] = field(default_factory=dict)
    stop: bool = False

    def matches(self, event: Event) -> bool:
        for name, accepted in self.match.items():
            if not any(value in accepted for value in field_values(event, name)):
                return False
        return True


@dataclass(frozen=True, slots=True)
class Router:
    """Routes plus the default sinks; ``sinks_for`` is the only operation."""

    routes: tuple[Route, ...]
    default: tuple[str, ...]

    def sinks_for(self, event: Event) -> tuple[str, ...]:
        chosen: list[str] = []
        matched = False
        for route in self.routes:
            if route.matches(event):
                matched = True
                _extend_unique(chosen, route.sinks)
                if route.stop:
                    break
        if not matched:
            _extend_unique(chosen, self.default)
        return tuple(chosen)

    def sink_names(self) -> set[str]:
        """Every sink any route can send to."""
        names = set(self.default)
        for route in self.routes:
            names.update(route.sinks)
        return names


def _extend_unique(target: list[str], names: Iterable[str]) -> None:
    for name in names:
        if name not in target:
            target.append(name)
