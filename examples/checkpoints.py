"""Checkpoints end to end: save, list, TTL, publish, download with progress, resume with and without optimizer.

Offline, against the embedded local server (no network, no key)::

    python examples/checkpoints.py --download-dir ./downloaded

Steps: train a LoRA adapter for a few steps and save it twice (a kept checkpoint and a scratch one with
a one-hour TTL) plus a sampler checkpoint; list the run's checkpoints through the RestClient; change
and remove an expiry; publish and unpublish; download the archive of the kept checkpoint from its signed
URL (without the API key) with a progress line, and unpack it; then resume training from the checkpoint
twice, once with the optimizer state and once without, and compare both with the run that never
stopped: with the Adam moments restored the next step is the same, without them it is not.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from _connect import add_server_args, open_service  # examples/_connect.py: --base-url, or an embedded server

import tinker_sync
from tinker_sync import types

TEXT = "The quick brown fox jumps over the lazy dog. "


def make_data(tokenizer: tinker_sync.Tokenizer) -> list[types.Datum]:
    """A few next-token datums cut from a short text."""
    ids = tokenizer.encode(TEXT * 3, add_special_tokens=False)
    data = []
    for start in range(0, 48, 12):
        window = ids[start:start + 24]
        data.append(types.Datum(model_input=types.ModelInput.from_ints(window[:-1]),
                                loss_fn_inputs={"target_tokens": window[1:], "weights": [1.0] * (len(window) - 1)}))
    return data


def train_step(training: tinker_sync.TrainingClient, data: list[types.Datum], lr: float) -> float:
    """One forward_backward + optim_step; returns the loss before the step."""
    fwd_bwd = training.forward_backward(data, "cross_entropy")
    optim = training.optim_step(types.AdamParams(learning_rate=lr))
    loss = fwd_bwd.result(timeout=600).metrics["loss:sum"]
    optim.result(timeout=600)
    return loss


def download(url: str, target: Path) -> int:
    """Stream a signed URL into ``target`` with a progress line; the URL is the only credential (no API key)."""
    with urllib.request.urlopen(url, timeout=60) as resp, target.open("wb") as out:
        total = int(resp.headers.get("Content-Length") or 0)
        done = 0
        while block := resp.read(16384):
            out.write(block)
            done += len(block)
            shown = f"{done}/{total} bytes ({100 * done // total} %)" if total else f"{done} bytes"
            sys.stderr.write(f"\r  downloading {shown}")
        sys.stderr.write("\n")
    return done


def show_checkpoints(rest: tinker_sync.RestClient, run_id: str) -> None:
    """Print the run's checkpoints."""
    for ckpt in rest.list_checkpoints(run_id).result(timeout=60).checkpoints:
        expires = ckpt.expires_at.isoformat(timespec="seconds") if ckpt.expires_at else "never"
        print(f"  {ckpt.checkpoint_type:8s} {ckpt.tinker_path}  public={ckpt.public}  expires={expires}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_args(parser)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--download-dir", help="where to unpack the archive (default: a temporary directory)")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        service = open_service(stack, args)
        rest = service.create_rest_client()

        # ---- train and save ------------------------------------------------------------------------
        training = service.create_lora_training_client(base_model=args.base_model, rank=8, seed=0)
        data = make_data(training.get_tokenizer())
        for _ in range(args.steps):
            loss = train_step(training, data, args.lr)
        print(f"trained {args.steps} steps, last loss:sum {loss:.3f}")
        kept = training.save_state("kept").result(timeout=600).path
        scratch = training.save_state("scratch", ttl_seconds=3600).result(timeout=600).path
        sampler_path = training.save_weights_for_sampler("for-sampling").result(timeout=600).path
        print("saved", kept, scratch, sampler_path, sep="\n  ")
        run_id = training.model_id
        show_checkpoints(rest, run_id)

        # ---- TTL and visibility --------------------------------------------------------------------
        rest.set_checkpoint_ttl_from_tinker_path(kept, 7 * 24 * 3600).result(timeout=60)
        print("kept: expiry set to one week")
        show_checkpoints(rest, run_id)
        rest.set_checkpoint_ttl_from_tinker_path(kept, None).result(timeout=60)
        rest.publish_checkpoint_from_tinker_path(kept).result(timeout=60)
        print("kept: expiry removed, published")
        show_checkpoints(rest, run_id)
        rest.unpublish_checkpoint_from_tinker_path(kept).result(timeout=60)
        rest.delete_checkpoint_from_tinker_path(scratch).result(timeout=60)
        print("kept: unpublished; scratch deleted")
        show_checkpoints(rest, run_id)

        # ---- download ------------------------------------------------------------------------------
        archive = rest.get_checkpoint_archive_url_from_tinker_path(kept).result(timeout=600)
        target = Path(args.download_dir or stack.enter_context(tempfile.TemporaryDirectory()))
        target.mkdir(parents=True, exist_ok=True)
        tar_path = target / "kept.tar"
        size = download(archive.url, tar_path)
        with tarfile.open(tar_path) as tar:
            tar.extractall(target / "kept", filter="data")  # refuses links and paths leaving the directory
        tar_path.unlink()
        files = sorted(p.name for p in (target / "kept").iterdir())
        print(f"downloaded {size} bytes to {target / 'kept'}: {', '.join(files)}")

        # ---- resume --------------------------------------------------------------------------------
        # The run that never stopped takes one more step; then both resumed copies take the same step.
        train_step(training, data, args.lr)
        reference = training.forward(data).result(timeout=600).metrics["loss:sum"]
        with_opt = service.create_training_client_from_state_with_optimizer(kept)
        without_opt = service.create_training_client_from_state(kept)
        for name, client in (("with optimizer", with_opt), ("without optimizer", without_opt)):
            before = train_step(client, data, args.lr)
            after = client.forward(data).result(timeout=600).metrics["loss:sum"]
            same = abs(after - reference) < 1e-4 * abs(after)
            print(f"resumed {name}: loss {before:.4f} -> {after:.4f} after one step "
                  f"({'same as' if same else 'differs from'} the uninterrupted run's {reference:.4f})")


if __name__ == "__main__":
    main()
