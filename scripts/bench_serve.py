"""Load test of `pathstrat serve`: N concurrent clients, M requests, p50/p99 latency, errors.

Baseline in the same run: the package's fold models applied in-process to the same bag (the
compute a request cannot avoid), so the ratio is the service's overhead (HTTP, upload, checks,
temporary files). Generated data only; nothing is downloaded.

    python scripts/bench_serve.py --clients 8 --requests 500
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=500)
    args = ap.parse_args()

    import httpx
    import pandas as pd

    from pathstrat.cli import main as cli
    from pathstrat.sharing import build_package
    from pathstrat.sharing.serve import add_token
    from pathstrat.testing import make_feature_cohort

    d = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    fdir, man = make_feature_cohort(d, n_patients=40, dim=384, seed=0, tiles=(200, 400), tasks=("binary",),
                                    dtype="float32")
    assert cli(["-q", "train", "--features", str(fdir), "--manifest", str(man), "--out", str(d / "run"),
                "--target", "responder", "--folds", "3", "--epochs", "3"]) == 0
    pkg = build_package(d / "run", d / "bench-1.0.0.pathstrat", name="bench", version="1.0.0")
    tok = add_token(d / "tokens.json", "bench")
    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "pathstrat", "serve", "--package", str(pkg), "--tokens",
                             str(d / "tokens.json"), "--port", str(port), "--audit-log", str(d / "audit.jsonl")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    while sel.select(timeout=300):
        if "startup complete" in proc.stderr.readline():
            break
    sid = pd.read_csv(man)["slide_id"].iloc[0]
    body = (fdir / f"{sid}.h5").read_bytes()
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {tok}",
                                               "Content-Type": "application/x-hdf5"}

    def one(_: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        with httpx.Client(base_url=url, timeout=120) as c:
            r = c.post("/v1/predict", params={"slide_id": sid}, content=body, headers=headers)
        return time.perf_counter() - t0, r.status_code

    try:
        one(0)  # warm-up
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as ex:
            res = list(ex.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    lat = np.array([r[0] for r in res]) * 1000
    errors = sum(r[1] != 200 for r in res)

    # baseline: the fold models on the same bag, in process
    import torch

    from pathstrat.features import read_bag
    from pathstrat.training.inference import load_fold_model, load_run_spec

    spec = load_run_spec(pkg)
    models = [load_fold_model(pkg, f, spec) for f in spec["folds"]]
    x = torch.from_numpy(np.asarray(read_bag(fdir / f"{sid}.h5").features, np.float32))[None]
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    reps = []
    with torch.inference_mode():
        for _ in range(50):
            t = time.perf_counter()
            for m in models:
                m(x, mask)
            reps.append(time.perf_counter() - t)
    base = float(np.median(reps)) * 1000
    out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "clients": args.clients, "requests": args.requests, "errors": errors,
           "throughput_rps": args.requests / wall, "p50_ms": float(np.percentile(lat, 50)),
           "p99_ms": float(np.percentile(lat, 99)), "baseline_compute_ms": base,
           "n_tiles": int(x.shape[1]), "p50_over_compute": float(np.percentile(lat, 50)) / base}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
