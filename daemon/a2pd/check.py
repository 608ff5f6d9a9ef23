"""``a2pd check -c FILE``: is the account and app this config names ready for a2pd?

(Being written: see issue #15.)
"""

from __future__ import annotations


def main(config_path: str) -> int:
    """Check the platform access ``config_path`` describes; the process exit code."""
    raise NotImplementedError(config_path)
