"""Load figures of the OpenAI-compatible server: requests/s and p50/p95 latency, batched vs unbatched.

    python benchmarks/bench_server.py                                   # tiny random model, CPU
    python benchmarks/bench_server.py --model-path CKPT_OR_EXPORT --device cuda --dtype bfloat16
    python benchmarks/bench_server.py --clients 1 4 16 --requests-per-client 8 --max-tokens 16

For each mode (unbatched: `--max-batch-size 1`; batched: `--batch-size`, default 16, with
`--max-wait-ms`) `python -m llava.serve.api` runs on a free port of 127.0.0.1 in its own process (the
tiny model is written as an export first); for each number of concurrent clients,
every client sends `--requests-per-client` transcription requests one after the other through the
`openai` client (1-4 s of noise each, wav). Reported: requests/s over the wall time of that load,
the p50/p95 of per-request latency, the batched/unbatched ratio of requests/s, and whether both modes
gave the same answers (they must: generation is batch-invariant). A random model rarely emits the
end-of-turn token, so nearly every answer runs to `--max-tokens`: a fixed output length.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generation import tiny_random_model  # noqa: E402  (the tiny model of the generation benchmark)

from llava.model.processing import SpeechLlavaProcessor  # noqa: E402

NAME = "bench"


def audio_files(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        wave = (0.1 * rng.standard_normal(int(16000 * rng.uniform(1.0, 4.0)))).astype(np.float32)
        buf = io.BytesIO()
        sf.write(buf, wave, 16000, format="WAV")
        out.append(buf.getvalue())
    return out


def tiny_export(directory: Path, device: str) -> Path:
    """The tiny random model written as a standalone export (what the server process loads)."""
    model, tok = tiny_random_model(device)
    model.config.audio_feature_extractor = model.audio_tower.feature_extractor.to_dict()
    model.save_pretrained(directory, trainable_only=False)
    SpeechLlavaProcessor.from_model(model, tok).save_pretrained(directory)
    return directory


def start_server(model_path: str, args: argparse.Namespace, batch_size: int) -> tuple[subprocess.Popen, str]:
    """`python -m llava.serve.api` on a free port; returns the process and its URL once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "llava.serve.api",
        "--model-path",
        model_path,
        "--served-model-name",
        NAME,
        "--port",
        str(port),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--max-new-tokens",
        str(args.max_tokens),
        "--max-batch-size",
        str(batch_size),
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    sys.exit("the server did not answer within 10 minutes")


def largest_batches(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url + "/health") as resp:
        return json.load(resp)["batch_sizes"]


def run_load(url: str, files: list[bytes], clients: int, per_client: int) -> tuple[dict, list[str]]:
    """`clients` threads, each sending `per_client` requests in turn; returns figures and answers."""
    import openai

    def client_loop(c: int) -> list[tuple[int, float, str]]:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
        done = []
        for k in range(per_client):
            i = (c * per_client + k) % len(files)
            start = time.perf_counter()
            text = client.audio.transcriptions.create(model=NAME, file=("a.wav", files[i])).text
            done.append((i, time.perf_counter() - start, text))
        return done

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client_loop, range(clients)) for r in rs]
    wall = time.perf_counter() - start
    latencies = np.array([r[1] for r in results])
    answers = [t for _, _, t in sorted(results, key=lambda r: r[0])]
    return {
        "clients": clients,
        "requests": len(results),
        "requests_per_s": len(results) / wall,
        "p50_s": float(np.percentile(latencies, 50)),
        "p95_s": float(np.percentile(latencies, 95)),
    }, answers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", default=None, help="checkpoint or export (default: tiny random model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests-per-client", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16, help="largest batch of the batched mode")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args()

    tmp = tempfile.TemporaryDirectory()
    model_path = args.model_path or str(tiny_export(Path(tmp.name) / "tiny", args.device))
    files = audio_files(max(args.clients) * args.requests_per_client)
    figures: dict[str, list[dict]] = {}
    answers: dict[str, dict[int, list[str]]] = {}
    for mode, batch_size in (("unbatched", 1), ("batched", args.batch_size)):
        proc, url = start_server(model_path, args, batch_size)
        try:
            run_load(url, files[:2], 1, 2)  # warm-up
            figures[mode], answers[mode] = [], {}
            seen = largest_batches(url)
            for clients in args.clients:
                fig, texts = run_load(url, files, clients, args.requests_per_client)
                now = largest_batches(url)
                fig["batch_sizes"] = {k: v - seen.get(k, 0) for k, v in now.items() if v > seen.get(k, 0)}
                seen = now
                figures[mode].append(fig)
                answers[mode][clients] = texts
                print(
                    f"{mode:>9}  clients {clients:>2}: {fig['requests_per_s']:6.2f} req/s  "
                    f"p50 {fig['p50_s'] * 1000:7.1f} ms  p95 {fig['p95_s'] * 1000:7.1f} ms  "
                    f"batch sizes {fig['batch_sizes']}",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(60)
    tmp.cleanup()

    same = answers["batched"] == answers["unbatched"]
    print(
        f"\ndevice {args.device}, {args.max_tokens} new tokens per request, batches of up to {args.batch_size}, "
        f"wait {args.max_wait_ms:g} ms; answers identical in both modes: {'yes' if same else 'NO'}"
    )
    print(
        "| clients | unbatched req/s | p50 ms | p95 ms | batched req/s | p50 ms | p95 ms | batched / unbatched |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for u, b in zip(figures["unbatched"], figures["batched"]):
        ratio = b["requests_per_s"] / u["requests_per_s"]
        rows.append({"clients": u["clients"], "unbatched": u, "batched": b, "ratio": ratio})
        print(
            f"| {u['clients']} | {u['requests_per_s']:.2f} | {u['p50_s'] * 1000:.0f} | {u['p95_s'] * 1000:.0f} "
            f"| {b['requests_per_s']:.2f} | {b['p50_s'] * 1000:.0f} | {b['p95_s'] * 1000:.0f} | {ratio:.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "answers_identical": same}, indent=2) + "\n")
    if not same:
        sys.exit("batched answers differ from unbatched ones")


if __name__ == "__main__":
    main()
