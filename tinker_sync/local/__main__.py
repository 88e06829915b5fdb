"""``python -m tinker_sync.local``: run the local Tinker server (see ``_cli.main``)."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
