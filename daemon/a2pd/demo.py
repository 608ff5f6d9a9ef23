"""``a2pd demo``: the bundled emulator and the daemon in one process, events flowing.

The emulator listens on a free loopback port and generates realistic A2P traffic (batches
moving Processing → Completed, per-message status changes, inbound replies, STOP/START);
the daemon runs on the embedded demo config (``daemon/a2pd/data/demo.toml``, also at
``config/demo.toml``) pointed at that emulator. Ctrl-C stops both cleanly.
"""

from __future__ import annotations

import os
import sys
from importlib.resources import files

import anyio

from a2pd import config
from a2pd import logging as a2pd_logging
from a2pd.app import Daemon
from a2pd.emulator import Emulator, EmulatorConfig

__all__ = [
    "demo_config_text",
    "run_demo",
]


def demo_config_text() -> str:
    """The embedded demo configuration."""
    return files("a2pd").joinpath("data/demo.toml").read_text(encoding="utf-8")


async def run_demo(config_path: str | None, rate: float, duration: float | None,
                   seed: int) -> None:
    """Start the emulator, start the daemon against it, generate traffic until stopped."""
    text = await anyio.Path(config_path).read_text(encoding="utf-8") if config_path \
        else demo_config_text()
    emu_cfg = EmulatorConfig(seed=seed)
    emulator = Emulator(emu_cfg)
    async with emulator.running():
        settings = config.loads(
            text,
            source=config_path or "embedded demo config",
            # the emulator's credentials, whatever the config or the environment name: an
            # operator's real secrets ($A2PD_JWT, a *_file, a systemd credential) never
            # reach the emulator, and never clash with the demo's
            overrides={"platform": {
                "server": emulator.base_url,
                "client_id": emu_cfg.client_id,
                "client_secret": emu_cfg.client_secret,
                "jwt": emu_cfg.jwt,
                "client_secret_file": None,
                "jwt_file": None,
            }},
            env={name: value for name, value in os.environ.items()
                 if name not in (*config.SECRET_ENV.values(), "CREDENTIALS_DIRECTORY")},
        )
        a2pd_logging.configure(settings.log.level, settings.log.format)
        print(f"a2pd demo: emulator at {emulator.base_url}; events are also written under "
              f"{_file_sink_dirs(settings)}; Ctrl-C to stop", file=sys.stderr)
        daemon = Daemon(settings)
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            await daemon.subscribed.wait()
            emulator.traffic.start(rate=rate)
            if duration is not None:
                await anyio.sleep(duration)
                daemon.request_stop()
            # daemon.run returns after its graceful stop (Ctrl-C or the duration)
        emulator.traffic.stop()


def _file_sink_dirs(settings: config.Settings) -> str:
    dirs = [str(getattr(spec.options, "directory", "")) for spec in settings.sinks.values()
            if spec.type == "file"]
    return ", ".join(dirs) or "(no file sink)"
