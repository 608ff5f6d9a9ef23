"""`python -m daemon` is the same as the `a2pd` console script."""

from __future__ import annotations

import sys

from daemon.cli import main

sys.exit(main())
