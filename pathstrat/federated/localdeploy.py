"""A real Flower deployment on one machine: a SuperLink and one SuperNode per site as separate
processes, optionally with TLS (a CA and a server certificate made here), then ``flwr run``.

Used by the deployment test and ``scripts/bench_federated.py``; also a way to try a federation
before involving other hospitals. ``isolation="process"`` (the default) starts each SuperNode with
``--isolation process`` plus one long-running site executor next to it
(``python -m pathstrat.federated.siteexec``: torch, pathstrat and the site's features loaded once);
``isolation="subprocess"`` is Flower's default (a fresh ``flwr-clientapp`` process per message).
Every daemon is started in its own session and stopped by its process-group id (the SuperNode's
``flower-superexec`` and ClientApp children included); nothing is found or killed by name.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathstrat.errors import PathstratError

log = logging.getLogger(__name__)


class DeploymentError(PathstratError, RuntimeError):
    """The local deployment did not start or the run did not finish."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_tls_files(out_dir: str | os.PathLike, days: int = 2) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1/localhost signed by it (PEM).

    Returns ``{"ca": ca.crt, "cert": server.pem, "key": server.key}``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pathstrat test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {"ca": out / "ca.crt", "cert": out / "server.pem", "key": out / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    files["key"].chmod(0o600)
    return files


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v))


def make_node_keys(out_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair in OpenSSH format for SuperNode authentication
    (``ssh-keygen -t ecdsa -b 384`` equivalent): returns (private key, public key) paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = out / name, out / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    priv.chmod(0o600)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH) + b"\n")
    return priv, pub


@dataclass
class LocalDeployment:
    """SuperLink + SuperNodes on localhost. ``sites`` are node configs (``site-name``,
    ``manifest``, ``features-dir``, optional ``cache-dir``, ``drop-at-round``...).
    ``isolation``: ``process`` (a long-running site executor per SuperNode) or ``subprocess``
    (Flower's per-message ``flwr-clientapp`` processes). ``fast_pull_s``: SuperNodes run through
    :mod:`pathstrat.federated.supernode` polling every ``fast_pull_s`` s while a run is active
    (0 = the stock ``flower-supernode``, 3 s idle poll).

    Use as a context manager; :meth:`run` submits the app written by ``pathstrat federated
    init-app`` and waits (bounded) for it to end.
    """

    work_dir: Path
    sites: list[dict[str, Any]]
    tls: bool = False
    auth: bool = False
    unregistered_nodes: int = 0
    isolation: str = "process"
    fast_pull_s: float = 0.05
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    tls_files: dict[str, Path] = field(default_factory=dict)

    def _env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        # no update check or telemetry (no network at run time); the SuperExec that starts the
        # ServerApp (and, in subprocess isolation, each ClientApp) polls every 0.05 s, not 1 s
        env = {**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0",
               "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05", **self.env, "FLWR_HOME": str(self.work_dir / "flwr_home")}
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        root = str(Path(__file__).resolve().parents[2])  # this pathstrat, also in the app processes
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def _start(self, name: str, cmd: list[str]) -> None:
        logf = open(self.work_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                            env=self._env(), cwd=self.work_dir,
                                            start_new_session=True)
        logf.close()
        log.info("started %s (pid %d)", name, self.procs[name].pid)

    def start(self, timeout_s: float = 60) -> LocalDeployment:
        """Start the SuperLink, then one SuperNode per site; wait until all nodes are registered."""
        self.work_dir = Path(self.work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "flwr_home").mkdir(exist_ok=True)
        if self.isolation not in ("process", "subprocess"):
            raise DeploymentError(f"isolation '{self.isolation}' unknown; use 'process' or "
                                  "'subprocess'.")
        self.port = self.port or free_port()
        bin_dir = Path(sys.executable).parent
        if self.tls:
            self.tls_files = make_tls_files(self.work_dir / "certs")
            sec = ["--ssl-ca-certfile", str(self.tls_files["ca"]), "--ssl-certfile",
                   str(self.tls_files["cert"]), "--ssl-keyfile", str(self.tls_files["key"])]
        else:
            sec = ["--insecure"]
        self._start("superlink", [str(bin_dir / "flower-superlink"), *sec, "--host", "127.0.0.1",
                                  "--port", str(self.port), "--disable-runtime-dependency-installation",
                                  *(["--enable-supernode-auth"] if self.auth else [])])
        (self.work_dir / "flwr_home" / "config.toml").write_text(self.connection_toml(),
                                                                 encoding="utf-8")
        nodes = [dict(s) for s in self.sites]
        nodes += [{**self.sites[0], "site-name": f"intruder-{k}"} for k in range(self.unregistered_nodes)]
        for i, site in enumerate(nodes):
            nc = " ".join(f"{k}={_toml_value(v)}" for k, v in site.items())
            client_sec = (["--root-certificates", str(self.tls_files["ca"])] if self.tls
                          else ["--insecure"])
            if self.auth:
                priv, pub = make_node_keys(self.work_dir / "keys", f"node{i}")
                if i < len(self.sites):  # the intruders' keys are never registered
                    self._register(pub, timeout_s)
                client_sec += ["--auth-supernode-private-key", str(priv)]
            runtime_port = free_port()
            launcher = ([sys.executable, "-m", "pathstrat.federated.supernode", "--fast-s",
                         str(self.fast_pull_s), "--"] if self.fast_pull_s > 0
                        else [str(bin_dir / "flower-supernode")])
            self._start(f"supernode-{i}", [*launcher, *client_sec,
                                           "--superlink", f"127.0.0.1:{self.port}",
                                           "--isolation", self.isolation,
                                           "--port", str(runtime_port), "--node-config", nc])
            if self.isolation == "process":  # the site's long-running ClientApp executor
                self._start(f"siteexec-{i}", [sys.executable, "-m", "pathstrat.federated.siteexec",
                                              "--runtime-api-address", f"127.0.0.1:{runtime_port}",
                                              "--insecure"])
        self._wait_for_nodes(timeout_s)
        return self

    def _register(self, pub: Path, timeout_s: float) -> None:
        """``flwr supernode register KEY.pub local`` (retried while the SuperLink starts)."""
        flwr = str(Path(sys.executable).parent / "flwr")
        t0, out = time.monotonic(), ""
        while time.monotonic() - t0 < timeout_s:
            proc = subprocess.run([flwr, "supernode", "register", str(pub), "local"],
                                  env=self._env(), capture_output=True, text=True, timeout=60,
                                  cwd=self.work_dir)
            out = proc.stdout + proc.stderr
            if proc.returncode == 0:
                return
            time.sleep(1)
        raise DeploymentError(f"Could not register SuperNode key {pub}: {out[-1000:]}")

    def _wait_for_nodes(self, timeout_s: float) -> None:
        t0 = time.monotonic()
        link_log = self.work_dir / "superlink.log"
        while time.monotonic() - t0 < timeout_s:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise DeploymentError(f"{dead} exited at start; see {self.work_dir}/<name>.log")
            text = link_log.read_text(errors="replace") if link_log.exists() else ""
            if text.count("Activated node_id") >= len(self.sites) + (
                    0 if self.auth else self.unregistered_nodes):
                return
            time.sleep(0.5)
        raise DeploymentError(f"Not all {len(self.sites)} SuperNodes registered within "
                              f"{timeout_s:.0f} s; see {link_log}.")

    def connection_toml(self, name: str = "local") -> str:
        """The ``[superlink.<name>]`` block for ``$FLWR_HOME/config.toml``."""
        sec = (f'root-certificates = "{self.tls_files["ca"]}"' if self.tls else "insecure = true")
        return f'[superlink.{name}]\naddress = "127.0.0.1:{self.port}"\n{sec}\n'

    def run(self, app_dir: str | os.PathLike, timeout_s: float = 600, name: str = "local") -> str:
        """``flwr run APP NAME --stream``; returns its output (DeploymentError on failure/timeout)."""
        cfg = self.work_dir / "flwr_home" / "config.toml"
        cfg.write_text(self.connection_toml(name), encoding="utf-8")
        flwr = str(Path(sys.executable).parent / "flwr")
        try:
            proc = subprocess.run([flwr, "run", str(app_dir), name, "--stream"], env=self._env(),
                                  capture_output=True, text=True, timeout=timeout_s,
                                  cwd=self.work_dir)
        except subprocess.TimeoutExpired as exc:
            raise DeploymentError(f"flwr run did not finish within {timeout_s:.0f} s") from exc
        out = proc.stdout + proc.stderr
        (self.work_dir / "flwr_run.log").write_text(out, encoding="utf-8")
        if proc.returncode != 0:
            raise DeploymentError(f"flwr run exited {proc.returncode}: {out[-2000:]}")
        return out

    def stop(self, grace_s: float = 10) -> None:
        """SIGTERM each daemon's process group (by its pid), SIGKILL what is left after grace_s."""
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs.values():  # the group's children (superexec, clientapps) too
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if p.poll() is None:
                p.wait(timeout=5)

    def __enter__(self) -> LocalDeployment:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["DeploymentError", "LocalDeployment", "free_port", "make_node_keys", "make_tls_files"]
