"""Fill a frozen-feature cache ahead of training, with several processes.

    python -m llava.model.feature_cache --data_config CFG --audio_encoder ENC --out DIR --workers N
    python -m llava.model.feature_cache --report DIR

Reads the data config with the training data code (`SpeechDataset`, every row of the chosen
destinations once, the same decoding and resampling), shards the rows over N processes and stores each
utterance's features exactly as training would compute them on a miss (see `llava.model.feature_cache`).
Entries already present and valid are skipped, so a killed fill resumes where it stopped; a truncated
entry left by the kill is detected and recomputed.

The namespace depends on the dtype the encoder runs in: fill with the `--encoder_dtype` that training
uses (`auto`: bf16 on a GPU, as training with `--bf16` there; fp32 on a CPU). The namespace is printed;
training logs the one it uses.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import time
from collections import Counter
from typing import Any

import numpy as np
import torch

from llava.model.builder import dtype_by_name
from llava.model.feature_cache import STORAGE_DTYPES, FeatureCache, report

logger = logging.getLogger("llava.model.feature_cache")

DESTINATIONS = ("train", "eval", "test")


def load_frozen_encoder(
    name_or_path: str, layer: int, dtype: torch.dtype, attn_implementation: str, device: str
):
    """The encoder as training freezes it: no gradients, pinned to eval mode."""
    from llava.model.encoders import AudioEncoder

    encoder = AudioEncoder.from_pretrained(
        name_or_path, layer=layer, attn_implementation=attn_implementation, dtype=dtype
    )
    encoder.requires_grad_(False)
    encoder.frozen = True
    return encoder.to(device).eval()


def _resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return dtype_by_name(name, "--encoder_dtype")


def _device(name: str, rank: int) -> str:
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return f"cuda:{rank % torch.cuda.device_count()}"
    return "cpu"


def _field(sample: Any, name: str) -> Any:
    return sample[name] if isinstance(sample, dict) else getattr(sample, name)


def fill_shard(rank: int, world: int, opts: dict[str, Any]) -> dict[str, Any]:
    """Fill the rows j with j % world == rank; returns counts for the summary."""
    from llava.dataset.dataset import SpeechDataset

    if opts.get("threads"):
        torch.set_num_threads(opts["threads"])
    device = _device(opts["device"], rank)
    encoder = load_frozen_encoder(
        opts["audio_encoder"],
        opts["layer"],
        _resolve_dtype(opts["encoder_dtype"], device),
        opts["attn_implementation"],
        device,
    )
    cache = FeatureCache.for_encoder(
        opts["out"], encoder, storage_dtype=opts["storage_dtype"], min_free_gb=opts["min_free_gb"]
    )
    datasets = [
        SpeechDataset.from_config(
            opts["data_config"], dest, train=False, check_audio=False, sampling_rate=encoder.sampling_rate
        )
        for dest in opts["destinations"]
    ]
    rows = [(d, i) for d, ds in enumerate(datasets) for i in range(len(ds))]
    mine = rows[rank::world]
    counts: Counter[str] = Counter()
    audio_seconds = 0.0
    t0 = time.perf_counter()
    for done, (d, i) in enumerate(mine, 1):
        sample = datasets[d][i]
        if sample is None:  # undecodable audio: counted by the dataset, skipped here
            counts["skipped_bad_audio"] += 1
            continue
        audio = np.asarray(_field(sample, "audio"), dtype=np.float32)
        n = len(audio)
        if encoder.max_samples is not None and n > encoder.max_samples:
            counts["skipped_too_long_for_encoder"] += 1
            continue
        key = cache.key(audio)
        frames = int(encoder.frame_lengths(torch.tensor([n]))[0])
        if cache.get(key, n, frames, encoder.hidden_size) is not None:
            counts["existing"] += 1
            continue
        with torch.no_grad():
            wave = torch.from_numpy(audio)[None].to(device)  # [1, n]
            feats, _ = encoder.encode(wave, torch.tensor([n], device=device))
        cache.put(key, feats[0, :frames].to("cpu", cache.storage_dtype), n, str(_field(sample, "id")))
        counts["computed"] += 1
        audio_seconds += n / encoder.sampling_rate
        if done % 500 == 0:
            logger.info(
                "worker %d: %d/%d rows (%.1f rows/s)",
                rank,
                done,
                len(mine),
                done / (time.perf_counter() - t0),
            )
    return {
        "namespace": cache.namespace,
        "rows": len(mine),
        "counts": dict(counts),
        "corrupt_replaced": cache.stats.corrupt,
        "bytes_written": cache.stats.bytes_written,
        "computed_audio_seconds": audio_seconds,
        "write_disabled": cache.write_disabled,
    }


def fill(opts: dict[str, Any], workers: int = 1) -> dict[str, Any]:
    """Run `fill_shard` on `workers` processes (inline for 1) and merge their counts."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if workers == 1:
        results = [fill_shard(0, 1, opts)]
    else:
        if opts["device"] == "auto" and not torch.cuda.is_available():
            opts = {**opts, "threads": opts.get("threads") or max(1, (os.cpu_count() or 1) // workers)}
        with mp.get_context("spawn").Pool(workers) as pool:
            results = pool.starmap(fill_shard, [(r, workers, opts) for r in range(workers)])
    namespaces = {r["namespace"] for r in results}
    if len(namespaces) != 1:
        raise RuntimeError(f"feature cache workers disagree on the encoder identity: {sorted(namespaces)}")
    counts: Counter[str] = Counter()
    for r in results:
        counts.update(r["counts"])
    return {
        "namespace": namespaces.pop(),
        "rows": sum(r["rows"] for r in results),
        "counts": dict(counts),
        "corrupt_replaced": sum(r["corrupt_replaced"] for r in results),
        "bytes_written": sum(r["bytes_written"] for r in results),
        "computed_audio_seconds": sum(r["computed_audio_seconds"] for r in results),
        "write_disabled": next((r["write_disabled"] for r in results if r["write_disabled"]), None),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m llava.model.feature_cache",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--report", metavar="DIR", help="list the namespaces of a cache directory and exit")
    p.add_argument("--data_config", help="YAML data config (training format)")
    p.add_argument("--audio_encoder", help="hub id or directory of the speech encoder")
    p.add_argument("--out", help="cache directory (the training/eval --audio_feature_cache)")
    p.add_argument("--workers", type=int, default=1, help="processes (each loads the encoder)")
    p.add_argument("--layer", "--mm_speech_select_layer", type=int, default=-1, help="encoder output layer")
    p.add_argument(
        "--destinations",
        default="train,eval,test",
        help="comma-separated destinations of the config to fill (absent ones are ignored)",
    )
    p.add_argument("--storage_dtype", default="bfloat16", choices=sorted(STORAGE_DTYPES))
    p.add_argument("--encoder_dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--attn_implementation", default="sdpa")
    p.add_argument("--device", default="auto", help="auto (cuda:rank%%gpus, else cpu) | cpu | cuda:0 ...")
    p.add_argument("--min_free_gb", type=float, default=1.0, help="stop writing below this free space")
    args = p.parse_args(argv)
    if args.report is None:
        missing = [f"--{k}" for k in ("data_config", "audio_encoder", "out") if getattr(args, k) is None]
        if missing:
            p.error(f"missing {', '.join(missing)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.report is not None:
        print(report(args.report))
        return 0
    from llava.dataset.config import load_data_config

    config = load_data_config(args.data_config)  # a malformed config fails before any model loads
    wanted = [d.strip() for d in args.destinations.split(",") if d.strip()]
    unknown = sorted(set(wanted) - set(DESTINATIONS))
    if unknown:
        raise SystemExit(f"--destinations: unknown {unknown}; known {list(DESTINATIONS)}")
    destinations = [d for d in wanted if config.for_destination(d)]
    if not destinations:
        raise SystemExit(f"{args.data_config}: no partition has a destination among {wanted}")
    opts = {
        "data_config": args.data_config,
        "audio_encoder": args.audio_encoder,
        "out": args.out,
        "layer": args.layer,
        "destinations": destinations,
        "storage_dtype": args.storage_dtype,
        "encoder_dtype": args.encoder_dtype,
        "attn_implementation": args.attn_implementation,
        "device": args.device,
        "min_free_gb": args.min_free_gb,
    }
    t0 = time.perf_counter()
    result = fill(opts, workers=args.workers)
    elapsed = time.perf_counter() - t0
    hours = result["computed_audio_seconds"] / 3600
    per_hour = result["bytes_written"] / hours / 2**30 if hours else float("nan")
    print(
        f"namespace {result['namespace']}: {result['rows']} rows in {elapsed:.1f} s, {result['counts']}, "
        f"{result['corrupt_replaced']} corrupt entries replaced; wrote {result['bytes_written'] / 2**30:.3f} GiB "
        f"({per_hour:.2f} GiB per hour of audio)"
    )
    if result["write_disabled"]:
        print(f"writing stopped: {result['write_disabled']}")
    print(report(args.out))
    return 1 if result["write_disabled"] else 0
