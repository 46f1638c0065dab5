"""`pathstrat federated ...`: simulate, check a site, write the Flower app, run a site's SuperNode,
fine-tune.

Heavy imports (torch, flwr) happen inside the commands so `pathstrat --help` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

fed_app = typer.Typer(help="Federated MIL training across sites with Flower (only model weights "
                      "and aggregate statistics leave a site). See docs/federated.md.",
                      no_args_is_help=True)

PYPROJECT_TEMPLATE = """\
# Flower app of a pathstrat federation: `flwr run {app_dir} {connection} --stream`
# (docs/federated.md). pathstrat[federated] must be installed on the coordinator and every site.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "pathstrat-federation"
version = "1.0.0"
description = "pathstrat federated MIL training"
dependencies = ["pathstrat[federated]"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "pathstrat"

[tool.flwr.app.components]
serverapp = "pathstrat.federated.serverapp:server_app"
clientapp = "pathstrat.federated.clientapp:client_app"

[tool.flwr.app.config]
# read by the ServerApp on the coordinator (paths on the coordinator's disk)
config-file = "{config_file}"
out-dir = "{out_dir}"
"""

CONNECTION_TEMPLATE = """\
# Append to the Flower config of the machine that submits the run ($FLWR_HOME/config.toml,
# default ~/.flwr/config.toml); flwr 1.41 reads SuperLink connections from there.
[superlink.{connection}]
address = "{address}"
{security}
"""


def _kv(items: list[str] | None, what: str) -> dict[str, str]:
    from pathstrat.errors import ConfigError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{what} '{item}' must look like NAME=VALUE.")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _load_config(config: Path, overrides: dict, package: Path | None = None,
                 package_opts: dict | None = None):
    """The federation config with CLI overrides; ``package`` and ``package_opts`` (public key,
    signature requirement, new package's folder) start it from a model package."""
    from pathstrat.federated import FederationConfig

    opts = {k: (Path(v).resolve() if isinstance(v, Path) else v)
            for k, v in (package_opts or {}).items() if v not in (None, False)}
    fed = FederationConfig.load(config, package=Path(package).resolve() if package else None,
                                package_opts=opts)
    upd = {k: v for k, v in overrides.items() if v is not None}
    if upd:
        fed = FederationConfig.model_validate({**fed.model_dump(), **upd})
    return fed


@fed_app.command("simulate")
def simulate_cmd(
    manifest: Path = typer.Argument(..., help="Cohort manifest with a site column."),
    features: Path = typer.Option(..., "--features", help="Features folder (<slide_id>.h5) of the sites."),
    config: Path = typer.Option(..., "--config", "-c", help="Federation YAML/JSON (FederationConfig)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (checkpoints/, federation.json)."),
    site_col: str = typer.Option("site", "--site-col", help="Manifest column naming each slide's site."),
    site_features: list[str] = typer.Option(None, "--site-features", help="SITE=DIR features of one site."),
    drop_site: list[str] = typer.Option(None, "--drop-site", help="SITE=ROUND: simulate a site failing from ROUND on."),
    audit_dir: Path = typer.Option(None, "--audit-dir", help="Log every message each site sends here."),
    rounds: int = typer.Option(None, "--rounds", help="Override the config's rounds."),
    strategy: str = typer.Option(None, "--strategy", help="Override: fedavg or fedprox."),
    local_epochs: int = typer.Option(None, "--local-epochs", help="Override the config's local epochs."),
    workers: int = typer.Option(2, "--workers", "-j", help="Simulated sites training at once (one process each)."),
    backend: str = typer.Option("ray", "--backend", help="'ray' (Flower Simulation Runtime) or "
                                "'inprocess' (sites one after the other, no Ray)."),
    package: Path = typer.Option(None, "--package", help="Start from this model package (its "
                                 "weights, heads and pinned pipeline); writes a new version."),
    public_key: Path = typer.Option(None, "--public-key", help="Verify the package with this key."),
    require_signature: bool = typer.Option(False, "--require-signature",
                                           help="Refuse an unsigned starting package."),
    out_package: Path = typer.Option(None, "--out-package", help="The new package folder "
                                     "(default: OUT/<name>-<next minor version>.pathstrat)."),
) -> None:
    """Simulate K sites from one cohort split by its site column (real Flower messages)."""
    from pathstrat.federated import simulate, split_sites

    fed = _load_config(config, {"rounds": rounds, "strategy": strategy, "local_epochs": local_epochs},
                       package, {"public_key": public_key, "require_signature": require_signature,
                                 "out": out_package})
    drops = {k: int(v) for k, v in _kv(drop_site, "--drop-site").items()}
    sites = split_sites(manifest, out, site_col, features_dir=features,
                        site_features=_kv(site_features, "--site-features"), audit_dir=audit_dir,
                        drop_at_round=drops)
    summary = simulate(fed, sites, out, workers=workers, backend=backend)
    _print_summary(summary, out)


def _print_summary(summary: dict, out: Path) -> None:
    joined = ", ".join(f"{s['name']} ({s['n_train']} train / {s['n_eval']} held-out)"
                       for s in summary["sites"])
    typer.echo(f"sites joined: {joined}")
    for name, reason in summary["refused"].items():
        typer.echo(f"site refused: {name}: {reason}")
    for r in summary["rounds"]:
        ev = {k: round(v, 4) for k, v in r["evaluate"].items() if not k.endswith(".n")}
        failed = f" (failed: {', '.join(r['failed_sites'])})" if r["failed_sites"] else ""
        typer.echo(f"round {r['round']}: {json.dumps(ev)}{failed}")
    sel = summary.get("selection") or {}
    if sel:
        typer.echo(f"kept round {sel['kept_round']}: {sel['reason']} (curves: {out / 'round_curves.csv'})")
    typer.echo(summary["dp_statement"])
    typer.echo(f"global model: {out / 'checkpoints'} (use with `pathstrat predict` / `pathstrat report`)")
    pkg = summary.get("package")
    if pkg:
        p = pkg["parent"]
        typer.echo(f"new package: {pkg['name']} {pkg['version']} ({pkg['folder']}), parent "
                   f"{p['name']} {p['version']} (manifest sha256 {p['manifest_sha256'][:12]}...)")


@fed_app.command("check-site")
def check_site_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="The federation's config file."),
    manifest: Path = typer.Option(..., "--manifest", help="This site's manifest."),
    features: Path = typer.Option(..., "--features", help="This site's features folder."),
    name: str = typer.Option("site", "--name", help="Site name shown to the federation."),
    package: Path = typer.Option(None, "--package", help="This site's copy of the starting "
                                 "package (federations started from a package)."),
) -> None:
    """Run the join checks locally and show exactly the statistics this site would share."""
    from pathstrat.federated import FederationConfig, SiteConfig, check_site

    res = check_site(SiteConfig(name=name, manifest=manifest, features_dir=features),
                     FederationConfig.load(config, package=Path(package).resolve() if package else None))
    typer.echo(json.dumps(res, indent=1, default=str))


@fed_app.command("init-app")
def init_app_cmd(
    app_dir: Path = typer.Argument(..., help="Folder to write the Flower app (pyproject.toml) into."),
    config: Path = typer.Option(..., "--config", "-c", help="Federation config on the coordinator."),
    out: Path = typer.Option(Path("federated_run"), "--out", help="Run directory on the coordinator."),
    address: str = typer.Option("coordinator.example.org:8000", "--address",
                                help="SuperLink address (flwr 1.41: all APIs on one host:port)."),
    root_cert: Path = typer.Option(None, "--root-cert", help="CA certificate for TLS (stored as an "
                                   "absolute path, as flwr requires)."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain HTTP to the SuperLink: local "
                                  "tests on one machine only, never across sites."),
    connection: str = typer.Option("pathstrat", "--connection", help="SuperLink connection name."),
    package: Path = typer.Option(None, "--package", help="Start from this model package on the "
                                 "coordinator (overrides the config's package path)."),
) -> None:
    """Write the Flower app (pyproject.toml + SuperLink connection) used by `flwr run`."""
    from pathstrat.errors import ConfigError
    from pathstrat.federated import FederationConfig
    from pathstrat.io import write_text_atomic

    package = Path(package).expanduser().resolve() if package else None
    FederationConfig.load(config, package=package)  # fail now (package verified), not on the coordinator
    if (root_cert is None) == (not insecure):
        raise ConfigError("init-app needs exactly one of --root-cert CA.crt (TLS, the CA that signed "
                          "the SuperLink's certificate; see docs/federated.md) or --insecure "
                          "(local tests only).")
    security = ("insecure = true" if insecure
                else f'root-certificates = "{Path(root_cert).expanduser().resolve()}"')
    text = PYPROJECT_TEMPLATE.format(app_dir=app_dir, config_file=Path(config).resolve(),
                                     out_dir=Path(out).resolve(), connection=connection)
    if package is not None:
        text += f'package = "{package}"\n'
    path = write_text_atomic(Path(app_dir) / "pyproject.toml", text)
    conn = write_text_atomic(Path(app_dir) / "superlink-connection.toml", CONNECTION_TEMPLATE.format(
        connection=connection, address=address, security=security))
    typer.echo(f"wrote {path} and {conn}; append the latter to ~/.flwr/config.toml, then run: "
               f"flwr run {app_dir} {connection} --stream")


@fed_app.command("finetune")
def finetune_cmd(
    run_dir: Path = typer.Argument(..., help="Federated run directory (global model)."),
    manifest: Path = typer.Option(..., "--manifest", help="This site's manifest."),
    features: Path = typer.Option(..., "--features", help="This site's features folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the fine-tuned checkpoint."),
    name: str = typer.Option("site", "--name", help="Site name."),
    epochs: int = typer.Option(5, "--epochs", help="Local fine-tuning epochs."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (default: the federation's)."),
) -> None:
    """Fine-tune the global model on this site's data; report held-out metrics before/after."""
    from pathstrat.federated import SiteConfig, finetune_site

    res = finetune_site(run_dir, SiteConfig(name=name, manifest=manifest, features_dir=features), out,
                        epochs=epochs, lr=lr)
    typer.echo(json.dumps({k: res[k] for k in ("before", "after", "run_dir")}, indent=1))


@fed_app.command("privacy")
def privacy_cmd(
    noise_multiplier: float = typer.Option(..., "--noise-multiplier", "-z"),
    clipping_norm: float = typer.Option(..., "--clipping-norm", "-C"),
    rounds: int = typer.Option(..., "--rounds"),
    delta: float = typer.Option(1e-5, "--delta"),
) -> None:
    """The (epsilon, delta) site-level guarantee of client-side fixed-clipping DP."""
    from pathstrat.federated import dp_guarantee

    typer.echo(dp_guarantee(noise_multiplier, clipping_norm, rounds, delta).describe())


@fed_app.command("supernode", context_settings={"allow_extra_args": True,
                                                "ignore_unknown_options": True})
def supernode_cmd(
    ctx: typer.Context,
    fast_s: float = typer.Option(0.05, "--fast-s", help="Poll interval while a run is active (s); "
                                 "Flower's is 3 s."),
    window_s: float = typer.Option(30.0, "--window-s", help="Seconds after a message during "
                                   "which the SuperNode polls every --fast-s."),
) -> None:
    """Run flower-supernode with a short poll interval while a run is active (arguments after
    '--' are flower-supernode's; docs/federated.md, "Round overhead")."""
    from pathstrat.federated.supernode import main

    main(["--fast-s", str(fast_s), "--window-s", str(window_s), "--", *ctx.args])


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""
    app.add_typer(fed_app, name="federated")
