"""The ``tinker-sync`` command line (argparse); the only module that prints."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import attrs

if TYPE_CHECKING:
    from .rest_client import RestClient
    from .service_client import ServiceClient

__all__ = ["CLIError", "main", "safe_extract"]

logger = logging.getLogger(__name__)

_UTC = _dt.timezone.utc

_TIMEOUT_S = 120.0
_RUN_COLUMNS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "id": ("Run ID", lambda r: r.training_run_id),
    "model": ("Base Model", lambda r: r.base_model),
    "owner": ("Owner", lambda r: r.model_owner),
    "lora": ("LoRA", lambda r: f"rank {r.lora_rank}" if r.is_lora else "full"),
    "updated": ("Last Update", lambda r: _rel_time(r.last_request_time)),
    "status": ("Status", lambda r: "corrupted" if r.corrupted else "ok"),
    "checkpoint": ("Last Checkpoint", lambda r: r.last_checkpoint.checkpoint_id if r.last_checkpoint else "-"),
    "checkpoint_time": ("Checkpoint Time", lambda r: _rel_time(r.last_checkpoint.time) if r.last_checkpoint else "-"),
}
_DEFAULT_RUN_COLUMNS = "id,model,lora,updated,status"


class CLIError(Exception):
    """A user-facing failure: printed as ``Error: <msg>`` with exit status 1."""


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def _to_jsonable(obj: Any) -> Any:
    if attrs.has(type(obj)):
        return {k: _to_jsonable(v) for k, v in attrs.asdict(obj, recurse=False).items()}
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    return obj


def _rel_time(value: Any, *, now: _dt.datetime | None = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)
    now = now or _dt.datetime.now(_UTC)
    seconds = (now - value).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds > 30 * 86400:
        return str(value.date().isoformat())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size or unit == "second":
            n = int(seconds // size)
            text = f"{n} {unit}{'' if n == 1 else 's'}"
            return f"in {text}" if future else f"{text} ago"
    return "-"  # pragma: no cover


def _human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def format_table(title: str | None, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def _emit(args: argparse.Namespace, out: TextIO, data: Any, table: Callable[[], str]) -> None:
    if args.format == "json":
        json.dump(_to_jsonable(data), out, indent=2, default=str)
        out.write("\n")
    else:
        out.write(table() + "\n")


def _checkpoint_rows(ckpts: Iterable[Any]) -> list[list[Any]]:
    return [
        [
            c.checkpoint_id,
            c.checkpoint_type,
            _human_size(c.size_bytes),
            "yes" if c.public else "no",
            _rel_time(c.time),
            _rel_time(c.expires_at) if c.expires_at else "never",
            c.tinker_path,
        ]
        for c in ckpts
    ]


_CKPT_HEADERS = ["Checkpoint ID", "Type", "Size", "Public", "Created", "Expires", "Path"]

# ---------------------------------------------------------------------------------------------
# Safe archive extraction
# ---------------------------------------------------------------------------------------------


def safe_extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[str]:
    """Extract a tar archive into ``dest`` with ``tinker_sync._download.safe_extract``; refusals are CLIErrors."""
    from ._download import ArchiveRefusedError
    from ._download import safe_extract as extract

    try:
        return extract(archive, dest)
    except ArchiveRefusedError as exc:
        raise CLIError(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def _rest(args: argparse.Namespace) -> RestClient:
    from .service_client import ServiceClient

    service: ServiceClient = ServiceClient()
    args.service_client = service
    return service.create_rest_client()


def _check_path(path: str) -> str:
    if not path.startswith("tinker://"):
        raise CLIError(f"{path!r} is not a tinker path (expected tinker://RUN/weights/NAME)")
    from .types import ParsedCheckpointTinkerPath

    try:
        ParsedCheckpointTinkerPath.from_tinker_path(path)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    return path


def cmd_version(args: argparse.Namespace, out: TextIO) -> int:
    from ._version import __version__

    if args.format == "json":
        _emit(args, out, {"version": __version__}, lambda: "")
    else:
        out.write(f"tinker-sync {__version__}\n")
    return 0


def cmd_run_list(args: argparse.Namespace, out: TextIO) -> int:
    cols = [c.strip() for c in args.columns.split(",") if c.strip()]
    unknown = [c for c in cols if c not in _RUN_COLUMNS]
    if unknown:
        raise CLIError(f"unknown column(s) {', '.join(unknown)}; choose from {', '.join(_RUN_COLUMNS)}")
    rest = _rest(args)
    limit = None if args.limit == 0 else args.limit
    runs = list(rest.iter_training_runs(page_size=100, limit=limit, timeout_s=_TIMEOUT_S))
    _emit(
        args, out, {"runs": runs},
        lambda: format_table(
            f"Training runs ({len(runs)})",
            [_RUN_COLUMNS[c][0] for c in cols],
            [[_RUN_COLUMNS[c][1](r) for c in cols] for r in runs],
        ),
    )
    return 0


def cmd_run_info(args: argparse.Namespace, out: TextIO) -> int:
    run = _rest(args).get_training_run(args.run_id).result(_TIMEOUT_S)
    rows = [[title, fn(run)] for title, fn in _RUN_COLUMNS.values()]
    _emit(args, out, run, lambda: format_table(f"Training run {run.training_run_id}", ["Property", "Value"], rows))
    return 0


def cmd_checkpoint_list(args: argparse.Namespace, out: TextIO) -> int:
    rest = _rest(args)
    if args.run_id:
        ckpts = list(rest.list_checkpoints(args.run_id).result(_TIMEOUT_S).checkpoints)
        data: dict[str, Any] = {"run_id": args.run_id, "checkpoints": ckpts}
    else:
        limit = None if args.limit == 0 else args.limit
        ckpts = list(rest.iter_user_checkpoints(page_size=1000, limit=limit, timeout_s=_TIMEOUT_S))
        data = {"checkpoints": ckpts}
    _emit(args, out, data, lambda: format_table(f"Checkpoints ({len(ckpts)})", _CKPT_HEADERS, _checkpoint_rows(ckpts)))
    return 0


def _find_checkpoint(rest: RestClient, path: str) -> Any:
    from .types import ParsedCheckpointTinkerPath

    parsed = ParsedCheckpointTinkerPath.from_tinker_path(path)
    for c in rest.list_checkpoints(parsed.training_run_id).result(_TIMEOUT_S).checkpoints:
        if c.checkpoint_id == parsed.checkpoint_id:
            return c
    raise CLIError(f"checkpoint {path} not found")


def cmd_checkpoint_info(args: argparse.Namespace, out: TextIO) -> int:
    path = _check_path(args.path)
    rest = _rest(args)
    ckpt = _find_checkpoint(rest, path)
    run = rest.get_training_run_by_tinker_path(path).result(_TIMEOUT_S)
    data = dict(_to_jsonable(ckpt), is_lora=run.is_lora, lora_rank=run.lora_rank)
    rows = [[k, "-" if v is None else v] for k, v in data.items()]
    _emit(args, out, data, lambda: format_table(f"Checkpoint {path}", ["Property", "Value"], rows))
    return 0


def cmd_checkpoint_publish(args: argparse.Namespace, out: TextIO) -> int:
    rest = _rest(args)
    fn = (
        rest.publish_checkpoint_from_tinker_path
        if args.command == "publish"
        else rest.unpublish_checkpoint_from_tinker_path
    )
    fn(_check_path(args.path)).result(_TIMEOUT_S)
    return 0


def cmd_checkpoint_set_ttl(args: argparse.Namespace, out: TextIO) -> int:
    path = _check_path(args.path)
    if args.remove == (args.ttl is not None):
        raise CLIError("give exactly one of --ttl SECONDS or --remove")
    if args.ttl is not None and args.ttl <= 0:
        raise CLIError("--ttl must be a positive number of seconds")
    _rest(args).set_checkpoint_ttl_from_tinker_path(path, None if args.remove else args.ttl).result(_TIMEOUT_S)
    return 0


def _parse_date(value: str, flag: str) -> _dt.datetime:
    try:
        d = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CLIError(f"{flag} must be an ISO-8601 date or datetime, got {value!r}") from exc
    return d if d.tzinfo else d.replace(tzinfo=_UTC)


_DELETE_KINDS = {"training": "training", "weights": "training", "sampler": "sampler", "sampler_weights": "sampler"}


def _run_checkpoints_to_delete(args: argparse.Namespace, rest: RestClient) -> list[str]:
    """The tinker paths of the run's checkpoints that pass --type/--before/--after."""
    kind = _DELETE_KINDS.get(args.type or "")
    before = _parse_date(args.before, "--before") if args.before else None
    after = _parse_date(args.after, "--after") if args.after else None
    return [
        c.tinker_path
        for c in rest.list_checkpoints(args.run_id).result(_TIMEOUT_S).checkpoints
        if (not kind or c.checkpoint_type == kind)
        and (before is None or c.time < before)
        and (after is None or c.time > after)
    ]


def _confirm_delete(args: argparse.Namespace, count: int) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CLIError(f"refusing to delete {count} checkpoint(s) without -y/--yes")
    answer = input(f"Delete {count} checkpoint(s)? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise CLIError("aborted")


def cmd_checkpoint_delete(args: argparse.Namespace, out: TextIO) -> int:
    paths = [_check_path(p) for p in args.paths]
    if (args.type or args.before or args.after) and not args.run_id:
        raise CLIError("--type/--before/--after need --run-id")
    if not paths and not args.run_id:
        raise CLIError("give checkpoint paths or --run-id")
    rest = _rest(args)
    if args.run_id:
        paths.extend(_run_checkpoints_to_delete(args, rest))
    if not paths:
        _emit(args, out, {"deleted_count": 0, "failed": []}, lambda: "No checkpoints to delete")
        return 0
    _confirm_delete(args, len(paths))
    failed: list[dict[str, str]] = []
    # The runtime's worker pool runs the DELETEs concurrently (bounded by max_workers).
    futs = [(p, rest.delete_checkpoint_from_tinker_path(p)) for p in paths]
    for p, f in futs:
        try:
            f.result(_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - reported per path
            failed.append({"tinker_path": p, "error": str(exc)})
    deleted = len(paths) - len(failed)
    _emit(
        args, out, {"deleted_count": deleted, "failed": failed},
        lambda: "\n".join(
            [f"Deleted {deleted} checkpoint(s)"] + [f"Failed: {x['tinker_path']}: {x['error']}" for x in failed]
        ),
    )
    return 1 if failed else 0


def _download(url: str, target: Path) -> int:
    from ._download import download_signed_url, tqdm_progress

    # the signed URL is the only credential: never send the API key to the storage host
    progress = tqdm_progress("download") if sys.stderr.isatty() else None
    return download_signed_url(url, target, progress=progress)


def cmd_checkpoint_download(args: argparse.Namespace, out: TextIO) -> int:
    path = _check_path(args.path)
    parent = Path(args.output or ".").expanduser()
    dest = parent / path[len("tinker://"):].replace("/", "_")
    if dest.exists() and not args.force:
        raise CLIError(f"{dest} already exists (use --force to replace it)")
    resp = _rest(args).get_checkpoint_archive_url_from_tinker_path(path).result(600.0)
    if not resp.url.startswith(("http://", "https://")):
        raise CLIError(f"refusing to download from a non-HTTP URL: {resp.url[:60]!r}")
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".tinker-download-") as tmp:
        archive = Path(tmp) / "checkpoint.tar"
        size = _download(resp.url, archive)
        staging = Path(tmp) / "extracted"
        safe_extract(archive, staging)
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    data = {"checkpoint_path": path, "destination": str(dest), "file_size_bytes": size}
    _emit(args, out, data, lambda: f"Downloaded {path} ({_human_size(size)}) to {dest}")
    return 0


def cmd_tokenizers_install(args: argparse.Namespace, out: TextIO) -> int:
    from .local._tokenizer import HUB_MODELS, install_hub_cache

    cache = install_hub_cache(args.cache_dir)
    data = {"cache_dir": str(cache), "models": list(HUB_MODELS)}
    _emit(args, out, data, lambda: f"Installed the tokenizers of {', '.join(HUB_MODELS)} in {cache}\n"
          "(AutoTokenizer.from_pretrained(<model name>) now finds them offline, e.g. with HF_HUB_OFFLINE=1)")
    return 0


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    from .local import main as serve_main

    return int(serve_main(list(args.serve_args)) or 0)


# ---------------------------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of ``tinker-sync``."""
    fmt = argparse.ArgumentParser(add_help=False)
    fmt.add_argument("-f", "--format", choices=("table", "json"), default=argparse.SUPPRESS,
                     help="output format (default: table)")
    parser = argparse.ArgumentParser(prog="tinker-sync", description="Tinker (and local server) command line",
                                     parents=[fmt])
    sub = parser.add_subparsers(dest="group", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("serve", help="run the embedded local Tinker server", add_help=False)
    p.add_argument("serve_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("version", help="show the version", parents=[fmt])
    p.set_defaults(func=cmd_version)

    tok = sub.add_parser("tokenizers", help="the local models' tokenizers", parents=[fmt])
    tok_sub = tok.add_subparsers(dest="command", metavar="SUBCOMMAND")
    tok_sub.required = True
    p = tok_sub.add_parser("install", parents=[fmt],
                           help="make the local models' tokenizers loadable offline from the Hugging Face hub cache")
    p.add_argument("--cache-dir", default=None,
                   help="hub cache directory "
                        "(default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)")
    p.set_defaults(func=cmd_tokenizers_install)

    run = sub.add_parser("run", help="training runs", parents=[fmt])
    run_sub = run.add_subparsers(dest="command", metavar="SUBCOMMAND")
    run_sub.required = True
    p = run_sub.add_parser("list", help="list training runs", parents=[fmt])
    p.add_argument("--limit", type=int, default=20, help="number of runs (0 = all; default 20)")
    p.add_argument("-c", "--columns", default=_DEFAULT_RUN_COLUMNS, help=f"comma list of {','.join(_RUN_COLUMNS)}")
    p.set_defaults(func=cmd_run_list)
    p = run_sub.add_parser("info", help="show one training run", parents=[fmt])
    p.add_argument("run_id")
    p.set_defaults(func=cmd_run_info)

    ck = sub.add_parser("checkpoint", help="checkpoints", parents=[fmt])
    ck_sub = ck.add_subparsers(dest="command", metavar="SUBCOMMAND")
    ck_sub.required = True
    p = ck_sub.add_parser("list", help="list checkpoints", parents=[fmt])
    p.add_argument("--run-id")
    p.add_argument("--limit", type=int, default=20, help="number of checkpoints without --run-id (0 = all)")
    p.set_defaults(func=cmd_checkpoint_list)
    p = ck_sub.add_parser("info", help="show one checkpoint", parents=[fmt])
    p.add_argument("path")
    p.set_defaults(func=cmd_checkpoint_info)
    for name in ("publish", "unpublish"):
        p = ck_sub.add_parser(name, help=f"{name} a checkpoint", parents=[fmt])
        p.add_argument("path")
        p.set_defaults(func=cmd_checkpoint_publish)
    p = ck_sub.add_parser("set-ttl", help="set or remove a checkpoint's expiry", parents=[fmt])
    p.add_argument("path")
    p.add_argument("--ttl", type=int, help="seconds from now")
    p.add_argument("--remove", action="store_true", help="never expire")
    p.set_defaults(func=cmd_checkpoint_set_ttl)
    p = ck_sub.add_parser("delete", help="delete checkpoints", parents=[fmt])
    p.add_argument("paths", nargs="*")
    p.add_argument("--run-id")
    p.add_argument("--type", choices=("weights", "sampler_weights", "training", "sampler"))
    p.add_argument("--before")
    p.add_argument("--after")
    p.add_argument("-y", "--yes", action="store_true")
    p.set_defaults(func=cmd_checkpoint_delete)
    p = ck_sub.add_parser("download", help="download and extract a checkpoint archive", parents=[fmt])
    p.add_argument("path")
    p.add_argument("-o", "--output", help="parent directory (default: current directory)")
    p.add_argument("--force", action="store_true", help="replace an existing destination")
    p.set_defaults(func=cmd_checkpoint_download)
    return parser


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 error, 130 interrupted)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":  # everything after `serve` belongs to the server's own parser
        from .local import main as serve_main

        return int(serve_main(argv[1:]) or 0)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if not hasattr(args, "format"):
        args.format = "table"
    level = os.environ.get("TINKER_LOG", "").lower()
    if level in ("debug", "info"):
        logging.basicConfig(level=logging.DEBUG if level == "debug" else logging.INFO, stream=err)
    try:
        return int(args.func(args, out))
    except KeyboardInterrupt:
        err.write("Interrupted\n")
        return 130
    except CLIError as exc:
        err.write(f"Error: {exc}\n")
        return 1
    except Exception as exc:  # noqa: BLE001 - the CLI reports every failure the same way
        err.write(f"Error: {exc}\n")
        if exc.__cause__ is not None:
            err.write(f"  caused by: {exc.__cause__}\n")
        return 1
    finally:
        service = getattr(args, "service_client", None)
        if service is not None:
            service.close()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
