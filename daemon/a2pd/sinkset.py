"""The configured sinks as a set: built from the settings, closed and reopened together,
and what happens to the backlog of a sink removed from the config (handed over to the sink
that ``takes_over`` it, dropped on purpose, or the start or reload is refused)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable
from operator import methodcaller

from a2pd import counts
from a2pd.config import Settings, SinkSpec
from a2pd.errors import ConfigError, ConfigProblem
from a2pd.journal import Journal
from a2pd.logging import get_logger
from a2pd.sinks import Sink, SinkContext, sink_class

__all__ = ["build_sinks", "close_sinks", "reopen_sinks", "settle_removed_sinks"]

log = get_logger("daemon")


def build_sinks(settings: Settings, context: SinkContext) -> dict[str, Sink]:
    """Instantiate every configured sink that a route can reach."""
    used = settings.router.sink_names()
    sinks: dict[str, Sink] = {}
    for name, spec in settings.sinks.items():
        if name not in used:
            log.warning("sink_unused", sink=name)
            continue
        sinks[name] = sink_class(spec.type)(name, spec.options, context)
    return sinks


async def close_sinks(sinks: Iterable[Sink]) -> None:
    """Close each sink; one that fails to close is logged and the rest still close."""
    await _each(sinks, methodcaller("aclose"), "sink_close_failed")


async def reopen_sinks(sinks: Iterable[Sink]) -> None:
    """Reopen each sink's files (logrotate's create/move); failures are logged."""
    await _each(sinks, methodcaller("reopen"), "sink_reopen_failed")


async def _each(sinks: Iterable[Sink], action: Callable[[Sink], Awaitable[None]],
                failed: str) -> None:
    for sink in sinks:
        try:
            await action(sink)
        except Exception as exc:  # noqa: BLE001 - one sink must not block the rest
            log.error(failed, sink=sink.name, error=repr(exc))


async def settle_removed_sinks(journal: Journal, specs: dict[str, SinkSpec],
                               running: Collection[str], drop: Collection[str],
                               *, check_only: bool = False,
                               routed_anew_after: int | None = None) -> list[str]:
    """Sinks with a cursor in the journal that are no longer ``running`` (removed or renamed
    in the config): a backlog goes to the sink whose ``takes_over`` names it, or is dropped
    if ``drop`` lists it, else ``ConfigError`` (nothing changed). Each hand-over or drop is
    a warning with its count. ``check_only``: only the check; else, after a check during a
    reload, a backlog that appeared since (events routed before the new routes applied)
    is dropped with its warning: the reload is under way and cannot be refused any more.
    The takers."""
    backlogs = await journal.backlogs(list(running))
    takers = {old: name for name, spec in specs.items() if name in running
              for old in spec.takes_over}
    problems = [ConfigProblem(
        f"sinks.{old}", f"removed with {count} undelivered events; keep it until they are "
        f"delivered, name it in another sink's takes_over to deliver them there, or list it "
        f"in delivery.drop_backlog to drop them")
        for old, count in backlogs.items()
        if count and old not in takers and old not in drop]
    if problems and check_only:
        raise ConfigError(problems)
    if check_only:
        return []
    moved_to: list[str] = []
    for old, count in backlogs.items():
        if old in takers:
            moved, again = await journal.hand_over(old, takers[old], routed_anew_after)
            moved_to.append(takers[old])
            log.warning("sink_backlog_handed_over", sink=old, to=takers[old], events=moved,
                        delivered_again=again)
        else:
            await journal.drop_sink(old)
            if count:
                journal.counters.inc(counts.DROPPED_REMOVED_SINK, count)
                log.warning("sink_backlog_dropped", sink=old, events=count,
                            note="delivery.drop_backlog names this removed sink"
                            if old in drop else "routed to it while the reload ran "
                            "(it had none when the reload was checked)")
    return moved_to
