"""a2pd: a daemon that consumes RingCentral High Volume SMS (A2P) event notifications."""

from __future__ import annotations

__version__ = "0.1.0"
