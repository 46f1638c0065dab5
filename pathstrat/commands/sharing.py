"""CLI: `pathstrat package [build] RUN`, `package verify`, `package keygen` (see pathstrat.cli)."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperGroup


class _BuildByDefault(TyperGroup):
    """`pathstrat package RUN --out P` means `pathstrat package build RUN --out P`."""

    def parse_args(self, ctx, args):  # noqa: D102
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["build", *args]
        return super().parse_args(ctx, args)


package_app = typer.Typer(cls=_BuildByDefault, no_args_is_help=True,
                          help="Model packages: build from a run, verify, make signing keys.")


@package_app.command("build")
def build_cmd(
    run: Path = typer.Argument(..., help="Run directory from `pathstrat train`."),
    out: Path = typer.Option(..., "--out", help="Package folder, e.g. msi-model-1.0.0.pathstrat."),
    name: str = typer.Option(None, "--name", help="Package name (default: from --out)."),
    version: str = typer.Option(None, "--version", help="Semantic version (default: from --out)."),
    parent: str = typer.Option(None, "--parent", help="Version this one derives from (lineage)."),
    features: Path = typer.Option(None, "--features", help="Training features (default: the run's config)."),
    sign_key: Path = typer.Option(None, "--sign-key", help="Ed25519 private key (PEM) to sign with."),
    licence: str = typer.Option("other", "--licence", help="Licence in the model card (SPDX id)."),
    intended_use: str = typer.Option("", "--intended-use", help="Intended use for the model card."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing package."),
    zip_too: bool = typer.Option(False, "--zip", help="Also write a .zip of the package."),
) -> None:
    """Package a training run: fold models, pinned pipeline, rules, OOD statistics, model card."""
    import re

    from pathstrat.sharing import build_package

    stem = out.name.removesuffix(".pathstrat")
    m = re.match(r"^(?P<name>.+)-(?P<version>\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?)$", stem)
    name = name or (m.group("name") if m else stem)
    version = version or (m.group("version") if m else "0.1.0")
    dest = build_package(run, out, name=name, version=version, parent=parent, features_dir=features,
                         sign_key=sign_key, licence=licence, intended_use=intended_use,
                         overwrite=overwrite, zip_too=zip_too)
    typer.echo(f"package {name} {version} written to {dest}")


@package_app.command("verify")
def verify_cmd(
    package: Path = typer.Argument(..., help="Package folder or .zip."),
    public_key: Path = typer.Option(None, "--public-key", help="The sponsor's Ed25519 public key (PEM)."),
    require_signature: bool = typer.Option(False, "--require-signature", help="Refuse unsigned packages."),
) -> None:
    """Check every file against the manifest and the signature; exit 2 with the reason if not."""
    from pathstrat.sharing import open_package

    with open_package(package, public_key=public_key, require_signature=require_signature) as (_, doc):
        typer.echo(f"ok: {doc['name']} {doc['version']} (parent {doc.get('parent') or '-'}), "
                   f"signature {doc['_signature']}, manifest sha256 {doc['_manifest_sha256']}")


@package_app.command("keygen")
def keygen_cmd(
    out: Path = typer.Option(..., "--out", help="Private key file; the public key goes to OUT.pub."),
) -> None:
    """Make an Ed25519 key pair for signing packages (keep the private key private)."""
    from pathstrat.errors import ConfigError
    from pathstrat.sharing import generate_keypair

    pub = out.with_name(out.name + ".pub")
    if out.exists() or pub.exists():
        raise ConfigError(f"{out} or {pub} exists; choose another --out.")
    generate_keypair(out, pub)
    typer.echo(f"private key {out} (mode 0600), public key {pub}: give partners the .pub file")


def serve_cmd(
    package: Path = typer.Option(..., "--package", help="Model package to serve (folder or .zip)."),
    tokens: Path = typer.Option(..., "--tokens", help="Client tokens file (make entries with `serve-token`)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    audit_log: Path = typer.Option(Path("audit.jsonl"), "--audit-log", help="JSON-lines audit log."),
    max_mb: float = typer.Option(64.0, "--max-mb", help="Largest upload accepted (MiB)."),
    public_key: Path = typer.Option(None, "--public-key", help="Verify the package with this key."),
    require_signature: bool = typer.Option(False, "--require-signature"),
) -> None:
    """Serve a package's predictions over HTTP (FastAPI + uvicorn; OpenAPI docs at /docs)."""
    from pathstrat.errors import import_optional

    uvicorn = import_optional("uvicorn", "serve", "the prediction service")

    from pathstrat.sharing.serve import create_app

    app = create_app(package, tokens, audit_log=audit_log, max_mb=max_mb, public_key=public_key,
                     require_signature=require_signature)
    uvicorn.run(app, host=host, port=port, log_level="info")


def serve_token_cmd(
    client: str = typer.Argument(..., help="Client name (recorded in the audit log)."),
    tokens: Path = typer.Option(..., "--tokens", help="Tokens file (created if absent; mode 0600)."),
    quota: int = typer.Option(10_000, "--quota", help="Requests per client per UTC day."),
) -> None:
    """Create a client token; only its hash is stored, the token is printed once."""
    from pathstrat.sharing.serve import add_token

    typer.echo(add_token(tokens, client, quota_per_day=quota))


def finetune_cmd(
    package: Path = typer.Option(..., "--package", help="The sponsor's model package."),
    features: Path = typer.Option(..., "--features", help="The partner's feature files (made as pinned)."),
    manifest: Path = typer.Option(..., "--manifest", help="The partner's manifest with labels."),
    out: Path = typer.Option(..., "--out", help="Output folder (comparison.json/csv, runs, new package)."),
    trainable: str = typer.Option("attention", "--trainable", help="head | attention | all."),
    folds: int = typer.Option(5, "--folds", help="Patient-grouped CV folds on the partner's data."),
    epochs: int = typer.Option(20, "--epochs"),
    lr: float = typer.Option(1e-4, "--lr", help="Learning rate of fine-tuning."),
    seed: int = typer.Option(0, "--seed"),
    n_boot: int = typer.Option(1000, "--n-boot", help="Patient-bootstrap resamples for the CIs."),
    version: str = typer.Option(None, "--version", help="Version of the new package (default: next minor)."),
    public_key: Path = typer.Option(None, "--public-key", help="Verify the package with this key."),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Adapt a package to your cohort: as-is vs fine-tuned vs from scratch, with CIs; writes a
    new package version whose parent is the package."""
    from pathstrat.errors import ConfigError
    from pathstrat.sharing.finetune import finetune_package

    if trainable not in ("head", "attention", "all"):
        raise ConfigError(f"--trainable must be head, attention or all, not '{trainable}'.")
    comp = finetune_package(package, features, manifest, out, trainable=trainable, folds=folds,
                            epochs=epochs, lr=lr, seed=seed, n_boot=n_boot, new_version=version,
                            public_key=public_key, device=device)
    for m, v in comp["models"].items():
        if v:
            typer.echo(f"{m:<13} {comp['primary_metric']} {v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]")
    d = comp.get("fine_tuned_minus_as_is")
    if d:
        typer.echo(f"fine-tuned - as-is: {d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]")
    typer.echo(f"new package: {Path(out) / comp['new_package']}")


def register(app: typer.Typer) -> None:
    """Add the package, service and fine-tuning commands."""
    app.add_typer(package_app, name="package")
    app.command("finetune")(finetune_cmd)
    app.command("serve")(serve_cmd)
    app.command("serve-token")(serve_token_cmd)
