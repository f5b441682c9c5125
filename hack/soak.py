"""Soak: mixed good, bad and cancelled traffic against the locally served app, for a fixed time. A measurement, not a
test (`make soak`; never part of `make test`).

Starts `python -m serve_app.run_local` (what `make run` runs) on 127.0.0.1 unless --url points at a running one,
sends --concurrency clients' worth of traffic for --seconds, samples the RSS of the whole server process tree and of
the model replica, and prints a JSON summary. Loopback only; every loop is bounded in time.

Passes when no response is a 5xx other than a 503 with Retry-After (exit 1 otherwise). RSS figures are reported, not
judged: compare `rss_first_minute_mib` with `rss_last_minute_mib`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]

GOOD_PROMPTS = ["Once upon a time", "The weather today is", "Hello friend, how", "In a distant galaxy",
                "The best way to learn is"]
BAD_BODIES = [
    b'{"prompt": "\\ud800"}',  # lone surrogate
    b'{"prompt": "x", "temperature": 1e-45}',
    b'{"prompt": "x", "top_p": 1e-46}',
    b'{"prompt": "x", "logprobs": 5}',
    b'{"prompt": "x", "best_of": 3}',
    b'{"prompt": "x", "max_tokens": 100000}',
    b'{"prompt": "x", "model": "\\ud800"}',
    b"{not json",
    b"\xff\xfe",
    b'{"prompt": "' + b"x" * (3 << 20) + b'"}',  # over the body bound: 413
]


def tree_rss(pid: int) -> int:
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class Tally:
    def __init__(self):
        self.by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.violations: list[str] = []
        self.transport_errors = collections.Counter()

    def record(self, kind: str, resp: httpx.Response) -> None:
        self.by_kind[kind][resp.status_code] += 1
        if resp.status_code >= 500 and not (resp.status_code == 503 and resp.headers.get("retry-after")):
            if len(self.violations) < 20:
                self.violations.append(f"{kind}: {resp.status_code} {resp.text[:200]}")
            self.by_kind[kind]["violations"] += 1


async def one_request(client: httpx.AsyncClient, rng: random.Random, tally: Tally) -> None:
    r = rng.random()
    if r < 0.45:  # good, non-streaming
        body = {"prompt": rng.choice(GOOD_PROMPTS), "max_tokens": rng.randint(4, 32),
                "temperature": rng.choice([0.0, rng.uniform(0.01, 1.5)])}
        tally.record("good", await client.post("/v1/completions", json=body))
    elif r < 0.55:  # good, /generate
        resp = await client.get("/generate", params={"query": rng.choice(GOOD_PROMPTS), "max_tokens": 16})
        tally.record("generate", resp)
    elif r < 0.65:  # good, streamed to the end
        body = {"prompt": rng.choice(GOOD_PROMPTS), "max_tokens": 24, "stream": True}
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            text = (await resp.aread()).decode()
            if resp.status_code == 200:
                events = [e.removeprefix("data: ") for e in text.split("\n\n") if e.strip()]
                errors = [e for e in events[:-1] if "error" in json.loads(e)]
                if errors or events[-1:] != ["[DONE]"]:  # an in-band error: what a 5xx becomes once streaming
                    tally.violations.append(f"stream: {errors[:1] or events[-2:]}")
                    tally.by_kind["stream"]["violations"] += 1
            tally.record("stream", resp)
    elif r < 0.80:  # bad input
        resp = await client.post("/v1/completions", content=rng.choice(BAD_BODIES),
                                 headers={"content-type": "application/json"})
        tally.record("bad", resp)
    else:  # cancelled: a stream dropped after its first chunk, or a request abandoned after a short wait
        body = {"prompt": rng.choice(GOOD_PROMPTS), "max_tokens": 128, "stream": rng.random() < 0.5}
        try:
            async with asyncio.timeout(rng.uniform(0.2, 2.0)):
                async with client.stream("POST", "/v1/completions", json=body) as resp:
                    async for _ in resp.aiter_bytes():
                        break
                    tally.record("cancelled", resp)
        except TimeoutError:
            tally.by_kind["cancelled"]["abandoned"] += 1


async def client_loop(url: str, deadline: float, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(330.0)) as client:
        while time.monotonic() < deadline:
            try:
                await one_request(client, rng, tally)
            except httpx.HTTPError as exc:  # connection-level: counted, not a status
                tally.transport_errors[type(exc).__name__] += 1


async def sample_rss(url: str, server_pid: int | None, deadline: float, samples: list) -> None:
    t0 = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while time.monotonic() < deadline:
            replica = None
            try:
                stats = (await client.get("/stats")).json()
                replica = stats.get("rss_bytes")
            except (httpx.HTTPError, ValueError):
                pass
            tree = tree_rss(server_pid) if server_pid else None
            samples.append({"t": round(time.monotonic() - t0), "replica_mib": replica and replica / 2**20,
                            "server_tree_mib": tree and tree / 2**20})
            await asyncio.sleep(10)


def start_server(port: int) -> subprocess.Popen:
    env = {**os.environ, "SERVE_PORT": str(port), "RAY_DASHBOARD": "0"}  # the dashboard is ~1 GB of noise here
    cmd = [sys.executable, "-m", "serve_app.run_local", "--config", str(ROOT / "serve_app/config/local.yaml")]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise SystemExit("server not healthy in time")


def window_mean(samples: list, key: str, first: bool, span: int = 60) -> float | None:
    if not samples:
        return None
    end = samples[-1]["t"]
    values = [s[key] for s in samples if s[key] and (s["t"] <= span if first else s["t"] >= end - span)]
    return round(statistics.mean(values), 1) if values else None


async def soak(url: str, seconds: float, concurrency: int, server_pid: int | None) -> dict:
    tally, samples = Tally(), []
    deadline = time.monotonic() + seconds
    await asyncio.gather(sample_rss(url, server_pid, deadline, samples),
                         *[client_loop(url, deadline, seed, tally) for seed in range(concurrency)])
    statuses = {k: dict(sorted(c.items(), key=str)) for k, c in sorted(tally.by_kind.items())}
    return {
        "seconds": seconds, "concurrency": concurrency, "statuses": statuses,
        "responses": sum(v for c in tally.by_kind.values() for k, v in c.items() if isinstance(k, int)),
        "violations": sum(c["violations"] for c in tally.by_kind.values()), "violation_samples": tally.violations,
        "transport_errors": dict(tally.transport_errors),
        "rss_first_minute_mib": {k: window_mean(samples, k, True) for k in ("replica_mib", "server_tree_mib")},
        "rss_last_minute_mib": {k: window_mean(samples, k, False) for k in ("replica_mib", "server_tree_mib")},
        "rss_samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running server (default: start one on --port)")
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--out", type=Path, help="also write the JSON summary here")
    args = p.parse_args(argv)
    proc = None
    url = args.url
    if url is None:
        url = f"http://127.0.0.1:{args.port}"
        proc = start_server(args.port)
    try:
        wait_healthy(url, proc)
        summary = asyncio.run(soak(url, args.seconds, args.concurrency, proc.pid if proc else None))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
