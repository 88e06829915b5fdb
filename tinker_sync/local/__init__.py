"""The embedded, offline, Tinker-compatible server (``LocalTinkerServer``) and its CLI entry point.

Importing this package is cheap: numpy and the engine load on the first request that needs a model.
"""

from __future__ import annotations

from ._cli import main
from ._faults import FaultInjector, RecordedRequest
from ._server import LocalTinkerServer, default_data_dir, route_table

__all__ = ["FaultInjector", "LocalTinkerServer", "RecordedRequest", "default_data_dir", "main", "route_table"]
