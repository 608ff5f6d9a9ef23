"""``python -m a2pd.emulator``: see :mod:`a2pd.emulator.cli`."""

from __future__ import annotations

import sys

from a2pd.emulator.cli import main

if __name__ == "__main__":
    sys.exit(main())
