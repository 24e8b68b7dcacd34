"""Data-side throughput and padding.

    python benchmarks/bench_data.py                      # on generated tones (temporary files)
    python benchmarks/bench_data.py --parquet FILE.parquet [--limit 2000]

Prints (1) decoded utterances per second (and audio seconds per second) through `decode_audio` on
the parquet's `audio` column, resampled to 16 kHz; (2) the padded share of audio in duration-bucketed
batches (`DurationBatchSampler`) against random batches with the same batch size, and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from llava.dataset.audio import audio_info, decode_audio, encode_audio
from llava.dataset.importers import write_parquet
from llava.dataset.sampler import DurationBatchSampler, padding_fraction


def make_parquet(path: Path, n: int, sr: int, fmt: str, seed: int = 0) -> None:
    """n tone+noise utterances of 1-20 s (log-uniform, like real corpora: many short, few long)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        seconds = float(np.exp(rng.uniform(np.log(1.0), np.log(20.0))))
        t = np.arange(int(seconds * sr)) / sr
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 1000) * t) + 0.02 * rng.standard_normal(len(t))
        rows.append(
            {"audio": encode_audio(wave, sr, fmt), "transcript": f"utterance {i}", "duration": seconds}
        )
    write_parquet(rows, path)


def durations_of(path: Path, limit: int | None) -> np.ndarray:
    table = pq.read_table(path, columns=None)
    if limit:
        table = table.slice(0, limit)
    if "duration" in table.column_names:
        return np.asarray(pc.cast(table.column("duration"), "float64").to_numpy(zero_copy_only=False))
    frames = [audio_info(v) for v in table.column("audio").to_pylist()]
    return np.array([f / sr for f, sr in frames])


def bench_decode(path: Path, limit: int | None, target_sr: int) -> tuple[int, float, float]:
    pf = pq.ParquetFile(path)
    n, audio_seconds, elapsed = 0, 0.0, 0.0
    for batch in pf.iter_batches(columns=["audio"], batch_size=64):
        values = batch.column(0).to_pylist()  # encoded bytes, as __getitem__ sees them
        start = time.perf_counter()
        for v in values:
            wave = decode_audio(v, target_sr)
            audio_seconds += len(wave) / target_sr
        elapsed += time.perf_counter() - start
        n += len(values)
        if limit and n >= limit:
            break
    return n, audio_seconds, elapsed


def bench_padding(durations: np.ndarray, batch_size: int, seed: int) -> tuple[float, float]:
    bucketed = list(DurationBatchSampler(durations, batch_size=batch_size, seed=seed))
    perm = np.random.default_rng(seed).permutation(len(durations))
    random = [perm[i : i + batch_size].tolist() for i in range(0, len(perm), batch_size)]
    return padding_fraction(bucketed, durations), padding_fraction(random, durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parquet", type=Path, default=None, help="an existing file (default: generated)")
    parser.add_argument("--n", type=int, default=300, help="utterances to generate")
    parser.add_argument("--source-sr", type=int, default=22050, help="sampling rate of generated audio")
    parser.add_argument("--format", default="flac", choices=["flac", "wav"])
    parser.add_argument("--limit", type=int, default=None, help="decode at most this many rows")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.parquet
        if path is None:
            path = Path(tmp) / "bench.parquet"
            start = time.perf_counter()
            make_parquet(path, args.n, args.source_sr, args.format)
            print(
                f"generated {args.n} utterances ({args.format}, {args.source_sr} Hz) in {time.perf_counter() - start:.1f} s"
            )
        n, audio_s, elapsed = bench_decode(path, args.limit, 16000)
        print(
            f"decode: {n} utterances in {elapsed:.2f} s -> {n / elapsed:.1f} utt/s, "
            f"{audio_s / elapsed:.0f} audio-s/s (to 16 kHz mono float32)"
        )
        durations = durations_of(path, args.limit)
        bucketed, random = bench_padding(durations, args.batch_size, args.seed)
        print(
            f"padding (batch {args.batch_size}, {len(durations)} utterances, mean {durations.mean():.1f} s): "
            f"bucketed {bucketed:.1%}, random {random:.1%}, ratio random/bucketed {random / max(bucketed, 1e-9):.1f}x"
        )


if __name__ == "__main__":
    main()
