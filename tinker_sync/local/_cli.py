"""The serve command: run the local Tinker server in the foreground (``main``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)


def build_parser(prog: str = "python -m tinker_sync.local") -> argparse.ArgumentParser:
    """The argument parser of the serve command."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run an offline, Tinker-compatible training and sampling server (tiny numpy models).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0 = any free port)")
    parser.add_argument("--data-dir", default=None,
                        help="where runs and checkpoints are kept (default: $XDG_CACHE_HOME/tinker_sync/local)")
    parser.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY", default=None,
                        help="accept only this key (repeatable); default: any key starting with 'tml-'")
    parser.add_argument("--long-poll", type=float, default=20.0, metavar="SECONDS",
                        help="how long retrieve_future waits for a result before 'try_again' (default: 20)")
    parser.add_argument("--session-timeout", type=float, default=600.0, metavar="SECONDS",
                        help="expire sessions without heartbeats or requests for this long (default: 600)")
    parser.add_argument("--jwt", action="store_true",
                        help="mint JWTs on POST /api/v1/auth/token and tell clients to use them (pjwt_auth_enabled)")
    parser.add_argument("--max-connections", type=int, default=256, metavar="N",
                        help="open connections beyond N get an immediate 503 (default: 256)")
    parser.add_argument("--no-tokenizer-install", dest="install_tokenizers", action="store_false",
                        help="do not write the local models' tokenizers into the Hugging Face hub cache (by default "
                             "serve does, so AutoTokenizer.from_pretrained('tinker-sync/tiny-byte') works offline)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="logging level (default: info)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, serve until Ctrl-C / SIGTERM, return the exit code."""
    args = build_parser().parse_args(argv)
    from ._server import LocalTinkerServer, default_data_dir

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data_dir = args.data_dir or default_data_dir()
    if args.install_tokenizers:
        from ._tokenizer import install_hub_cache

        try:
            logger.info("local model tokenizers installed in %s", install_hub_cache())
        except OSError as exc:  # a read-only cache only costs offline get_tokenizer(); serving goes on
            logger.warning("could not install the local model tokenizers in the hub cache: %s", exc)
    server = LocalTinkerServer(host=args.host, port=args.port, data_dir=data_dir, api_keys=args.api_keys,
                               long_poll_s=args.long_poll, session_timeout_s=args.session_timeout,
                               jwt_auth=args.jwt, max_connections=args.max_connections)
    try:
        server.start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Handle SIGINT explicitly too: a shell's background job inherits SIGINT ignored, which would make
    # KeyboardInterrupt never arrive.
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    print(f"tinker-sync local server listening on {server.url} (data: {server.data_dir})", flush=True)
    print(f"  export TINKER_BASE_URL={server.url}", flush=True)
    print("  export TINKER_API_KEY=tml-local" if not args.api_keys else "  (only the --api-key keys are accepted)",
          flush=True)
    print("Press Ctrl-C to stop.", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping...", flush=True)
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0

