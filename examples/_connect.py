"""What every example shares: ``--base-url`` / ``--base-model`` options and a ServiceClient for them.

Without ``--base-url`` (or ``TINKER_BASE_URL``) an embedded LocalTinkerServer is started for the run,
so the examples work offline; with it they talk to that server using ``TINKER_API_KEY``.
"""

from __future__ import annotations

import argparse
import contextlib
import os

import tinker_sync


def add_server_args(parser: argparse.ArgumentParser, base_model: str = "tinker-sync/tiny-byte") -> None:
    """Add ``--base-url`` and ``--base-model`` to ``parser``."""
    parser.add_argument("--base-url", default=os.environ.get("TINKER_BASE_URL") or None,
                        help="Tinker server; omitted = start the embedded local server")
    parser.add_argument("--base-model", default=base_model)


def open_service(stack: contextlib.ExitStack, args: argparse.Namespace, *, announce: bool = True
                 ) -> tinker_sync.ServiceClient:
    """A ServiceClient for ``args.base_url``, or for an embedded server started on ``stack``.

    Both are closed when ``stack`` closes (the client first, then the server).
    """
    base_url, api_key = args.base_url, os.environ.get("TINKER_API_KEY")
    if base_url is None:
        from tinker_sync.local import LocalTinkerServer

        server = stack.enter_context(LocalTinkerServer())  # data in a temporary directory
        base_url, api_key = server.url, api_key or "tml-local-demo"
        if announce:
            print(f"embedded Tinker server at {base_url}")
    return stack.enter_context(tinker_sync.ServiceClient(api_key=api_key, base_url=base_url))
