"""`python -m a2pd` is the same as the `a2pd` console script."""

from __future__ import annotations

import sys

from a2pd.cli import main

sys.exit(main())
