"""``python -m daemon.emulator``: see :mod:`daemon.emulator.cli`."""

from __future__ import annotations

import sys

from daemon.emulator.cli import main

if __name__ == "__main__":
    sys.exit(main())
