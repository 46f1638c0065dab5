"""`pathstrat serve --package P`: predictions as a service, for sponsors who keep weights private.

Clients POST one slide's feature file (HDF5, the body of the request, ``Content-Type:
application/x-hdf5``) to ``/v1/predict?slide_id=...`` with ``Authorization: Bearer <token>``.
The service validates size (413), encoder id, dimension, finite values and layout (422), runs the
package's fold models exactly as `pathstrat predict --package` does, and answers JSON with the
package name, version and manifest hash. Tokens are stored as sha256 hashes (never in clear);
each client has a daily quota (429); every request gets an id (``X-Request-ID``) and one line in
the audit log (who, when, which endpoint, status, tile count) that never holds submitted data.
OpenAPI docs are at ``/docs``.
"""


import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

log = logging.getLogger(__name__)

DEFAULT_MAX_MB = 64.0
DEFAULT_QUOTA = 10_000  # requests per client per UTC day

if TYPE_CHECKING:
    import pandas as pd


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_token(tokens_file: str | os.PathLike, client: str, *, quota_per_day: int = DEFAULT_QUOTA) -> str:
    """Create a token for ``client``; store only its hash; return the token (shown once)."""
    from pathstrat.io import write_json_atomic

    p = Path(tokens_file)
    doc = json.loads(p.read_text()) if p.is_file() else {"clients": {}}
    token = secrets.token_urlsafe(32)
    doc["clients"][client] = {"sha256": _hash(token), "quota_per_day": int(quota_per_day)}
    write_json_atomic(p, doc)
    os.chmod(p, 0o600)
    return token


class _Audit:
    """Append-only JSON-lines audit log (one line per request, no submitted data)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **rec: Any) -> None:
        rec = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **rec}
        with self.lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")


def create_app(package: str | os.PathLike, tokens_file: str | os.PathLike, *,
               audit_log: str | os.PathLike = "audit.jsonl", max_mb: float = DEFAULT_MAX_MB,
               public_key: str | os.PathLike | None = None, require_signature: bool = False,
               device: str = "cpu"):
    """The FastAPI app serving ``package`` (verified once, at start-up)."""
    from pathstrat.errors import import_optional

    import_optional("fastapi", "serve", "the prediction service")
    import pandas as pd
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from pathstrat.errors import FeatureDimError, SchemaError
    from pathstrat.features import read_bag
    from pathstrat.sharing.build import open_package
    from pathstrat.training.inference import predict

    work = Path(tempfile.mkdtemp(prefix="pathstrat-serve-"))
    with open_package(package, public_key=public_key, require_signature=require_signature) as (root, doc):
        shutil.copytree(root, work / "package")
    root = work / "package"
    clients = json.loads(Path(tokens_file).read_text())["clients"]
    by_hash = {v["sha256"]: (name, int(v.get("quota_per_day", DEFAULT_QUOTA))) for name, v in clients.items()}
    audit = _Audit(Path(audit_log))
    usage: dict[tuple[str, str], int] = {}
    usage_lock = threading.Lock()
    max_bytes = int(max_mb * 2**20)
    enc_id = doc["pipeline"]["encoder"].get("encoder_id")
    in_dim = int(doc["model"]["in_dim"])
    from pathstrat.training.inference import load_fold_model, load_run_spec

    spec = load_run_spec(root)
    models = {f["name"]: load_fold_model(root, f, spec, device) for f in spec["folds"]}  # loaded once
    info = {"package": doc["name"], "version": doc["version"], "manifest_sha256": doc["_manifest_sha256"]}

    app = FastAPI(title=f"pathstrat: {doc['name']} {doc['version']}",
                  description="Predictions of a pathstrat model package from tile features.",
                  version=doc["version"])

    def _client(request: Request, rid: str) -> str:
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        hit = by_hash.get(_hash(token)) if token else None
        if hit is None:
            audit.write(request_id=rid, client=None, endpoint=request.url.path, status=401)
            raise HTTPException(401, "missing or unknown token: send 'Authorization: Bearer <token>'",
                                headers={"X-Request-ID": rid})
        name, quota = hit
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        with usage_lock:
            n = usage.get((name, day), 0) + 1
            usage[(name, day)] = n
        if n > quota:
            audit.write(request_id=rid, client=name, endpoint=request.url.path, status=429)
            raise HTTPException(429, f"daily quota of {quota} requests used up", headers={"X-Request-ID": rid})
        return name

    @app.get("/v1/model")
    def model_info(request: Request) -> JSONResponse:
        """The served package: name, version, manifest hash, pinned pipeline, targets."""
        rid = uuid.uuid4().hex
        name = _client(request, rid)
        audit.write(request_id=rid, client=name, endpoint="/v1/model", status=200)
        return JSONResponse({**info, "pipeline": doc["pipeline"],
                             "targets": [t["name"] for t in doc["model"]["targets"]]},
                            headers={"X-Request-ID": rid})

    def _run(body: bytes, slide_id: str, rid: str, name: str):
        """Check the upload and predict it (blocking: runs in the thread pool)."""
        req = work / "requests" / rid
        (req / "features").mkdir(parents=True)
        try:
            (req / "features" / f"{slide_id}.h5").write_bytes(body)
            try:
                bag = read_bag(req / "features" / f"{slide_id}.h5", expected_dim=in_dim,
                               expected_encoder=enc_id, load_views=False)
            except (FeatureDimError, SchemaError) as exc:
                audit.write(request_id=rid, client=name, endpoint="/v1/predict", status=422)
                raise HTTPException(422, str(exc).replace(str(req), "<upload>"),
                                    headers={"X-Request-ID": rid}) from exc
            man = pd.DataFrame({"slide_id": [slide_id], "patient_id": [slide_id], "path": [""]})
            predict(root, req / "features", man, req / "out", allow_overlap=True, device=device,
                    save_attention=False, model_cache=models)
            pred = pd.read_csv(req / "out" / "predictions.csv")
            cols = [c for c in pred.columns if c in ("target", "score", "risk") or c.startswith("prob_")]
            return bag, json.loads(pred[cols].to_json(orient="records"))
        finally:
            shutil.rmtree(req, ignore_errors=True)

    @app.post("/v1/predict")
    async def predict_bag(request: Request, slide_id: str = "slide") -> JSONResponse:
        """One slide's feature file (HDF5 body) -> its predictions."""
        rid = uuid.uuid4().hex
        t0 = time.perf_counter()
        name = _client(request, rid)
        declared = int(request.headers.get("content-length") or 0)
        if declared > max_bytes:
            audit.write(request_id=rid, client=name, endpoint="/v1/predict", status=413, bytes=declared)
            raise HTTPException(413, f"upload of {declared} bytes exceeds the limit of {max_bytes}",
                                headers={"X-Request-ID": rid})
        body = await request.body()
        if len(body) > max_bytes:
            audit.write(request_id=rid, client=name, endpoint="/v1/predict", status=413, bytes=len(body))
            raise HTTPException(413, f"upload exceeds the limit of {max_bytes} bytes",
                                headers={"X-Request-ID": rid})
        if not slide_id or any(c in slide_id for c in "/\\\x00\n") or len(slide_id) > 160:
            raise HTTPException(422, "slide_id must be a plain name", headers={"X-Request-ID": rid})
        bag, rows = await run_in_threadpool(_run, body, slide_id, rid, name)  # off the event loop
        ms = 1000 * (time.perf_counter() - t0)
        audit.write(request_id=rid, client=name, endpoint="/v1/predict", status=200,
                    n_tiles=int(len(bag)), ms=round(ms, 1))
        return JSONResponse({**info, "request_id": rid, "slide_id": slide_id, "n_tiles": int(len(bag)),
                             "predictions": rows}, headers={"X-Request-ID": rid})

    app.state.workdir = work
    return app


def predict_remote(url: str, token: str, features_dir: str | os.PathLike,
                   manifest: "pd.DataFrame | str | os.PathLike",
                   out_dir: str | os.PathLike, *, timeout_s: float = 120.0) -> Path:
    """Client of the service: POST every manifest slide's feature file, write predictions.csv."""
    from pathstrat.errors import import_optional

    httpx = import_optional("httpx", "serve", "`predict --remote`")
    import pandas as pd

    from pathstrat.cohort import load_manifest
    from pathstrat.errors import PathstratError
    from pathstrat.io import ensure_writable_dir, write_dataframe_atomic, write_json_atomic

    df = manifest if isinstance(manifest, pd.DataFrame) else load_manifest(manifest, check_files=False)
    out = ensure_writable_dir(out_dir)
    rows, meta = [], {}
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-hdf5"}
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s) as client:
        for sid, pid in zip(df["slide_id"].astype(str), df["patient_id"].astype(str), strict=True):
            body = (Path(features_dir) / f"{sid}.h5").read_bytes()
            r = client.post("/v1/predict", params={"slide_id": sid}, content=body, headers=headers)
            if r.status_code != 200:
                raise PathstratError(f"service {url} refused slide '{sid}' ({r.status_code}): "
                                     f"{r.json().get('detail', r.text)}")
            doc = r.json()
            meta = {k: doc[k] for k in ("package", "version", "manifest_sha256")}
            for p in doc["predictions"]:
                rows.append({"slide_id": sid, "patient_id": pid, **p, "package": doc["package"],
                             "package_version": doc["version"], "request_id": doc["request_id"]})
    write_dataframe_atomic(out / "predictions.csv", pd.DataFrame(rows))
    write_json_atomic(out / "package_provenance.json", {**meta, "service": url})
    return out
