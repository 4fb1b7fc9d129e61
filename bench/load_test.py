"""Load test of ``refseg serve`` on loopback, written into docs/performance.md.

    python -m bench.load_test                          # bundled model, 200 concurrent requests
    python -m bench.load_test --model runs/x/best.safetensors --requests 200 --no-write

Starts ``python -m refseg serve`` as a child process on 127.0.0.1 (a free port; nothing else
is ever contacted), waits for ``GET /health``, then fires ``--requests`` POST /segment
requests *at once* (httpx async, one connection each), each a sample photo (JPEG) with one of
its expressions. Records the latency of every request (p50 / p90 / p99 / max), the status
codes (anything but 200 is an error; 503s are retried only with ``--retry-503``), the
throughput, and the server's peak resident memory (``VmHWM`` of the child process). The run
is bounded: the whole test stops after ``--deadline`` seconds and the server is stopped.

Without ``--model`` and without a bundled model it serves a fresh ``lstm_cnn`` (pretrained
backbone, untrained head): the same computation as a trained one, so the timings hold.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.doc_tables import PERFORMANCE, command_line, write_block

HOST = "127.0.0.1"  # never anything else


def resolve_model(model: str | None, folder: Path) -> tuple[str, str]:
    """(checkpoint path, description): the given model, else the bundled one, else a fresh lstm_cnn."""
    from refseg.engine.checkpoint import resolve_model_path
    from refseg.errors import CheckpointError

    try:
        path = resolve_model_path(model)
        return str(path), path.name
    except CheckpointError:
        if model is not None:
            raise
    from refseg.engine.checkpoint import save_model
    from refseg.models import create_model

    path = save_model(folder / "lstm_cnn.safetensors", create_model("lstm_cnn"), {"image_size": 320})
    return str(path), "fresh lstm_cnn (pretrained backbone, untrained head)"


def request_bodies() -> list[tuple[bytes, str]]:
    """(JPEG bytes, expression) pairs from the sample photos."""
    from PIL import Image

    from refseg.samples import SAMPLES

    bodies = []
    for sample in SAMPLES:
        buf = io.BytesIO()
        Image.fromarray(sample.load()).save(buf, format="JPEG", quality=90)
        bodies.extend((buf.getvalue(), text) for text in sample.expressions)
    return bodies


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size of a process (Linux ``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


async def wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with code {server.returncode}")
            try:
                response = await client.get(f"{url}/health", timeout=2)
                if response.status_code == 200:
                    return response.json()
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.25)
    raise SystemExit(f"the server did not become healthy within {timeout:.0f} s")


async def fire(url: str, bodies: list[tuple[bytes, str]], n: int, retry_503: bool, deadline: float) -> dict:
    """Send ``n`` requests at once; returns latencies (s), status counts and the wall time."""
    import httpx

    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    timeout = httpx.Timeout(deadline, connect=30.0)
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    gate = asyncio.Event()

    async def one(client: httpx.AsyncClient, i: int) -> None:
        image, text = bodies[i % len(bodies)]
        await gate.wait()
        start = time.perf_counter()
        while True:
            try:
                response = await client.post(
                    f"{url}/segment", files={"image": ("photo.jpg", image, "image/jpeg")}, data={"text": text}
                )
                status = str(response.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            if status == "503" and retry_503:
                await asyncio.sleep(0.5)
                continue
            break
        latencies.append(time.perf_counter() - start)
        statuses[status] = statuses.get(status, 0) + 1

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        tasks = [asyncio.create_task(one(client, i)) for i in range(n)]
        await asyncio.sleep(0.1)
        start = time.perf_counter()
        gate.set()
        done, pending = await asyncio.wait(tasks, timeout=deadline)
        for task in pending:
            task.cancel()
        wall = time.perf_counter() - start
    if pending:
        statuses["unfinished"] = len(pending)
    return {"latencies": np.array(latencies), "statuses": statuses, "wall": wall}


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, description = resolve_model(args.model, Path(tmp))
        port = free_port()
        url = f"http://{HOST}:{port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        command = [
            sys.executable, "-m", "refseg", "serve", "--host", HOST, "--port", str(port),
            "--model", checkpoint, "--queue", str(args.queue),
        ]
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        try:
            health = asyncio.run(wait_healthy(url, server, timeout=180))
            rss_idle = peak_rss_mb(server.pid)
            result = asyncio.run(fire(url, request_bodies(), args.requests, args.retry_503, args.deadline))
            result.update(peak_rss=peak_rss_mb(server.pid), idle_rss=rss_idle, model=description, health=health)
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
    return result


def report(result: dict, args: argparse.Namespace, command: str) -> str:
    lat = result["latencies"] * 1000.0
    ok = result["statuses"].get("200", 0)
    errors = sum(v for k, v in result["statuses"].items() if k != "200")
    pct = (lambda q: f"{np.percentile(lat, q):.0f}") if lat.size else (lambda q: "n/a")
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(result["statuses"].items()))
    cpu = platform.processor() or platform.machine()
    return "\n".join([
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({cpu}), torch threads {args.threads}, Python {platform.python_version()}; "
        f"model: {result['model']}, canvas {result['health']['model'].get('image_size')} px; "
        f"queue capacity {args.queue}; {'503s retried' if args.retry_503 else '503s count as errors'}.",
        "",
        "| requests (all at once) | ok | errors | p50 latency | p90 | p99 | max | wall time | throughput | server peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {args.requests} | {ok} | {errors} | {pct(50)} ms | {pct(90)} ms | {pct(99)} ms | {pct(100)} ms "
        f"| {result['wall']:.1f} s | {ok / result['wall']:.1f} req/s | {result['peak_rss']:.0f} MB "
        f"(idle {result['idle_rss']:.0f} MB) |",
        "",
        f"Status codes: {statuses}.",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint or shipped name (default: bundled, else a fresh lstm_cnn)")
    parser.add_argument("--requests", type=int, default=200, help="requests sent at once")
    parser.add_argument("--queue", type=int, default=256, help="the server's --queue (admitted requests)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the server")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds before the test gives up")
    parser.add_argument("--retry-503", action="store_true", help="retry requests refused with 503")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/performance.md alone")
    args = parser.parse_args(argv)
    result = run(args)
    markdown = report(result, args, command_line("load_test", argv if argv is not None else sys.argv[1:]))
    print(markdown)
    if not args.no_write:
        print(f"\nwritten to {write_block(PERFORMANCE, 'load-test', markdown)}")


if __name__ == "__main__":
    main()
