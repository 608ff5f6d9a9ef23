"""A reload (SIGHUP): routes, sinks and delivery settings change at once; the other
sections at the next start (``RESTART_SECTIONS``, logged). Sinks whose settings did not
change are kept (and reopen their files, for logrotate); changed ones are built anew and
swapped in once the old one has finished its batch; a removed sink's backlog goes where
its config says (``sinkset.settle_removed_sinks``). The journal and cursors stay.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import replace
from functools import partial
from pathlib import Path

from a2pd import config, counts
from a2pd.config import Settings, SinkSpec
from a2pd.errors import ConfigError
from a2pd.logging import get_logger
from a2pd.parts import Parts
from a2pd.pipeline import Pipeline
from a2pd.sinks import RetryPolicy, Sink, SinkContext, sink_class
from a2pd.sinkset import close_sinks, reopen_sinks, settle_removed_sinks

__all__ = ["RESTART_SECTIONS", "apply", "reload", "settle_reloaded_sinks"]

log = get_logger("daemon")

#: settings sections a reload cannot change (they apply at the next start)
RESTART_SECTIONS = ("platform", "subscription", "connection", "state", "journal", "log",
                    "ops", "backfill")


async def reload(parts: Parts, old: Settings, new: Settings | None,
                 config_path: str | os.PathLike[str] | None, state_dir: Path
                 ) -> Settings | None:
    """A reload of ``parts``, running with ``old``: to ``new``, or to the config file at
    ``config_path`` read anew (neither: the sinks reopen their files). The settings now in
    force, or None when nothing was applied (refused ones are logged and counted; the
    running configuration is kept). A backfill the
    platform refused tries again (the operator may have fixed the app's permissions)."""
    if parts.backfill is not None:
        parts.backfill.resume()
    if new is None and config_path is None:
        # nothing to read anew: a SIGHUP only reopens the files (logrotate)
        await reopen_sinks(parts.sinks.values())
        log.info("sinks_reopened", sinks=sorted(parts.sinks))
        return None
    try:
        if new is None:
            assert config_path is not None
            new = config.load(config_path)
        return await apply(parts, old, new, state_dir)
    except ConfigError as exc:
        parts.pipeline.counters.inc(counts.RELOADS_REFUSED)
        log.error("reload_refused", source=exc.source, problems=[str(p) for p in exc.problems],
                  note="the running configuration is kept")
    except Exception as exc:  # noqa: BLE001 - e.g. a sink that cannot be built
        parts.pipeline.counters.inc(counts.RELOADS_REFUSED)
        log.error("reload_refused", error=f"{type(exc).__name__}: {exc}",
                  note="the running configuration is kept")
    return None


async def apply(parts: Parts, old: Settings, new: Settings, state_dir: Path) -> Settings:
    """Apply ``new`` over ``old`` to a running daemon's ``parts``; the settings now in
    force. Raises (nothing changed) when the new sinks cannot be built or a removed sink's
    backlog has nowhere to go."""
    later = [name for name in RESTART_SECTIONS if getattr(new, name) != getattr(old, name)]
    if new.client_secret != old.client_secret or new.jwt != old.jwt:
        later.append("credentials")
    journal, pipeline = parts.journal, parts.pipeline
    used = new.router.sink_names()
    # a removed sink's backlog must have somewhere to go (or be dropped on purpose)
    await settle_removed_sinks(journal, new.sinks, used, new.delivery.drop_backlog,
                               check_only=True)
    sinks = await _sinks_for(parts.sinks, old, new, SinkContext(state_dir=state_dir,
                                                                counters=journal.counters))
    await reopen_sinks(sink for name, sink in sinks.items() if parts.sinks.get(name) is sink)
    retired = await pipeline.reconfigure(
        new.router, sinks,
        before_start=partial(settle_reloaded_sinks, pipeline, new.sinks, used,
                             new.delivery.drop_backlog))
    delivery = new.delivery
    pipeline.configure(batch_max=delivery.batch_max,
                       retry=RetryPolicy(initial=delivery.retry_initial,
                                         maximum=delivery.retry_max,
                                         max_attempts=delivery.max_attempts))
    await close_sinks(retired)
    previous, parts.sinks = parts.sinks, sinks
    pipeline.counters.inc(counts.RELOADS)
    log.info("reloaded", source=new.source,
             added=sorted(set(sinks) - set(previous)),
             removed=sorted(set(previous) - set(sinks)),
             replaced=sorted(n for n in sinks if n in previous and sinks[n] is not previous[n]),
             routes=[route.name for route in new.router.routes])
    if later:
        log.warning("reload_needs_restart", sections=later,
                    note="these sections changed; they apply at the next start")
    return replace(old, sinks=new.sinks, router=new.router, delivery=delivery)


async def _sinks_for(current: dict[str, Sink], old: Settings, new: Settings,
                     context: SinkContext) -> dict[str, Sink]:
    """The sinks ``new`` routes to: the running one where its settings are unchanged, else
    a new one (which adopts what its predecessor knew)."""
    used = new.router.sink_names()
    sinks: dict[str, Sink] = {}
    built: list[Sink] = []
    try:
        for name, spec in new.sinks.items():
            if name not in used:
                continue
            running = current.get(name)
            if running is not None and old.sinks.get(name) == spec:
                sinks[name] = running
                continue
            sink = sink_class(spec.type)(name, spec.options, context)
            built.append(sink)
            sinks[name] = sink
            if running is not None:
                sink.adopt(running)
    except BaseException:
        for sink in built:
            await sink.aclose()
        raise
    return sinks


async def settle_reloaded_sinks(pipeline: Pipeline, specs: dict[str, SinkSpec],
                                running: Collection[str], drop: Collection[str],
                                routed_anew_after: int) -> None:
    """A reload's ``before_start``: the readers of removed sinks have stopped (their cursors
    are final); events appended before the new routes applied are committed first (they
    carry the old targets), then the removed sinks' backlogs are handed over or dropped (a
    taker's new reader starts from its cursor in the journal, where the hand-over left
    it)."""
    await pipeline.journal.flush()
    await settle_removed_sinks(pipeline.journal, specs, running, drop,
                               routed_anew_after=routed_anew_after)
