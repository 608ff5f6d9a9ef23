"""Routes: fan out to every matching route, `stop`, default route, field conditions."""

from __future__ import annotations

from a2pd.router import Route, Router
from tests.harness import sample_event


def route(name: str, sinks: list[str], stop: bool = False, **match: list[str]) -> Route:
    return Route(name, tuple(sinks), {k.replace("from_", "from"): frozenset(v)
                                      for k, v in match.items()}, stop)


def test_fan_out_to_every_matching_route() -> None:
    """An event goes to the sinks of all matching routes, each sink once, in config order."""
    router = Router((route("all", ["a", "b"]), route("failed", ["c", "a"],
                                                      status=["DeliveryFailed"])), ("d",))
    assert router.sinks_for(sample_event("outbound_failed.json")) == ("a", "b", "c")
    assert router.sinks_for(sample_event("outbound.json")) == ("a", "b")


def test_default_route_only_when_nothing_matched() -> None:
    """The default route catches events no route matched, and only those."""
    router = Router((route("in", ["inbox"], kind=["inbound"]),), ("rest",))
    assert router.sinks_for(sample_event("inbound.json")) == ("inbox",)
    assert router.sinks_for(sample_event("batch.json")) == ("rest",)


def test_stop_ends_evaluation() -> None:
    """A matching route with stop=true keeps later routes from adding sinks."""
    router = Router((route("opt", ["o"], stop=True, kind=["optout"]), route("all", ["x"])), ())
    assert router.sinks_for(sample_event("optout.json")) == ("o",)
    assert router.sinks_for(sample_event("optin.json")) == ("x",)


def test_conditions_on_fields() -> None:
    """direction, from, to (any of the list), batchId, status and active all route."""
    cases = [
        (route("r", ["s"], direction=["Outbound"]), "outbound.json", True),
        (route("r", ["s"], direction=["Outbound"]), "inbound.json", False),
        (route("r", ["s"], from_=["+13102375087"]), "outbound.json", True),
        (route("r", ["s"], to=["+12406680432"]), "inbound.json", True),
        (route("r", ["s"], to=["+10000000000"]), "inbound.json", False),
        (route("r", ["s"], batchId=["a1b2c3d4-0000-4000-8000-0000000000b1"]),
         "outbound_failed.json", True),
        (route("r", ["s"], batchId=["a1b2c3d4-0000-4000-8000-0000000000b1"]), "batch.json",
         True),
        (route("r", ["s"], status=["Completed"]), "batch.json", True),
        (route("r", ["s"], active=["true"]), "optout.json", True),
        (route("r", ["s"], active=["true"]), "optin.json", False),
        (route("r", ["s"], active=["true"]), "outbound.json", False),
        (route("r", ["s"], kind=["outbound"], status=["Delivered"]), "outbound_failed.json",
         False),
    ]
    for rule, name, expected in cases:
        found = Router((rule,), ()).sinks_for(sample_event(name))
        assert found == (("s",) if expected else ()), (rule, name)


def test_sink_names_lists_every_target() -> None:
    """sink_names covers routes and the default route."""
    router = Router((route("a", ["x", "y"]),), ("z",))
    assert router.sink_names() == {"x", "y", "z"}
