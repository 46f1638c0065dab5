"""Federation and site configuration (strict pydantic; travels inside Flower messages as JSON).

The coordinator owns a :class:`FederationConfig` (model, heads, rounds, strategy, privacy);
each site owns a :class:`SiteConfig` (where its manifest and features are, what it accepts).
Nothing in either config describes a patient.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pathstrat.errors import ConfigError
from pathstrat.vocabulary import format_validation_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TargetDef(_Strict):
    """One prediction head; mirrors :class:`pathstrat.mil.targets.TargetSpec`.

    ``classes`` of a multiclass head may be left empty: the federation then agrees on the union
    of the class names the sites report (names and counts only).
    """

    name: str
    kind: str = Field(description="A registered target kind (pathstrat.mil.kinds.KINDS).")
    columns: list[str] = Field(default_factory=list)
    time_col: str | None = None
    event_col: str | None = None
    classes: list[Any] | None = None
    n_bins: int = Field(4, ge=2, description="Discrete-time survival bins (kind=discrete).")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        from pathstrat.mil.kinds import KINDS

        if v not in KINDS:
            raise ValueError(f"unknown target kind '{v}'; use one of {', '.join(KINDS.names())}")
        return v

    def spec(self):
        """The TargetSpec of pathstrat.mil for this head."""
        from pathstrat.mil.kinds import KINDS
        from pathstrat.mil.targets import TargetSpec

        classes = None if self.classes is None else list(self.classes)
        default = KINDS.get(self.kind).default_classes
        if default is not None and not classes:
            classes = list(default)
        return TargetSpec(self.name, self.kind, list(self.columns), self.time_col, self.event_col,
                          classes, self.n_bins)


class DPConfig(_Strict):
    """Central DP with client-side fixed clipping (Flower's DifferentialPrivacyClientSideFixedClipping).

    Each site clips its whole model update to L2 norm ``clipping_norm``; the coordinator adds
    Gaussian noise with std ``noise_multiplier * clipping_norm / n_sampled`` to the average.
    """

    noise_multiplier: float = Field(1.0, gt=0)
    clipping_norm: float = Field(1.0, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1, description="delta of the reported (epsilon, delta).")


class SecAggConfig(_Strict):
    """SecAgg+ (Flower's SecAggPlusWorkflow + secaggplus_mod): the coordinator sees only sums."""

    num_shares: float = Field(1.0, gt=0, description="Shares per site key: an int > 2, or a "
                              "fraction of the sampled sites.")
    reconstruction_threshold: float = Field(1.0, gt=0, description="Shares needed to rebuild a "
                                            "dropped site's mask: an int, or a fraction.")
    clipping_range: float = Field(8.0, gt=0, description="Parameters clipped to ±range before quantisation.")
    quantization_range: int = Field(2**22, gt=0)
    max_weight: float | None = Field(None, gt=0, description="Largest site weight (training bags); "
                                     "null = the largest joined site's count (best precision).")


class PackageStart(_Strict):
    """Start the federation from a model package (``package:`` in the federation YAML).

    Read on the coordinator only (never sent to a site): the package is verified, its model,
    heads, encoder and pinned pipeline fill the federation config, its weights become the initial
    global model, and the kept global model becomes a new package version whose parent it is
    (:mod:`pathstrat.sharing.federate`, docs/model-sharing.md).
    """

    path: Path = Field(description="The starting package (folder or .zip) on the coordinator.")
    public_key: Path | None = Field(None, description="Verify its signature with this Ed25519 key.")
    require_signature: bool = False
    out: Path | None = Field(None, description="The new package folder (default: "
                             "<out>/<name>-<next minor version>.pathstrat).")
    version: str | None = Field(None, description="Version of the new package (default: next minor).")
    sign_key: Path | None = Field(None, description="Sign the new package with this private key.")


class FederationConfig(_Strict):
    """Everything the coordinator decides; sent to every site with each round (but ``package``)."""

    model: str = Field("abmil", description="MIL model from pathstrat.mil.MODELS.")
    hparams: dict[str, Any] = Field(default_factory=dict)
    targets: list[TargetDef]
    encoder_id: str = Field(description="Feature encoder every site must have used.")
    feature_dim: int = Field(gt=0, description="Feature dimension every site must have.")
    level: Literal["slide", "patient"] = "slide"
    rounds: int = Field(5, ge=1)
    local_epochs: int = Field(1, ge=1)
    strategy: Literal["fedavg", "fedprox"] = "fedavg"
    proximal_mu: float = Field(0.01, ge=0, description="FedProx proximal weight mu.")
    fraction_train: float = Field(1.0, gt=0, le=1)
    fraction_evaluate: float = Field(1.0, ge=0, le=1)
    min_sites: int = Field(2, ge=1, description="Sites that must join before training starts.")
    expected_sites: int | None = Field(None, ge=1, description="Wait (up to join_timeout_s) for "
                                       "this many SuperNodes before the join; then go on with "
                                       "those connected (at least min_sites).")
    lr: float = Field(2e-4, gt=0, description="Local learning rate of round 1 (see lr_schedule).")
    lr_schedule: Literal["constant", "cosine", "step"] = Field(
        "cosine", description="Server-side learning-rate schedule across rounds: cosine from lr "
        "down to lr * lr_min_fraction at the last round, 'step' halves it every lr_step_rounds.")
    lr_min_fraction: float = Field(0.1, gt=0, le=1)
    lr_step_rounds: int = Field(5, ge=1)
    selection: Literal["loss", "pooled_auroc", "last"] = Field(
        "loss", description="Which round's global model is kept: lowest aggregated held-out loss, "
        "highest pooled AUROC of the first binary head (ties: lower loss), or the last round.")
    patience: int | None = Field(None, ge=1, description="Stop after this many rounds without a "
                                 "better held-out criterion (None: run all rounds).")
    evaluate_with_train: bool = Field(False, description="Each site evaluates the incoming global "
                                      "model on its held-out patients inside the next train "
                                      "message (one message per site and round instead of two; "
                                      "only with fraction_train = fraction_evaluate = 1, no SecAgg+).")
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(1, ge=1)
    max_tiles: int | None = Field(None, ge=1)
    seed: int = 0
    holdout_fraction: float = Field(0.25, ge=0, lt=1, description="Held-out patients per site "
                                    "(ignored when the manifest has a 'split' column).")
    time_max: float | None = Field(None, gt=0, description="Upper edge of the shared survival "
                                   "time grid (needed for discrete survival).")
    time_grid_bins: int = Field(200, ge=10, description="Bins of the shared survival time grid.")
    score_bins: int = Field(100, ge=10, description="Bins of the score histograms for pooled AUROC.")
    dp: DPConfig | None = None
    secagg: SecAggConfig | None = None
    timeout_s: float = Field(3600, gt=0, description="Seconds to wait for the sites each round.")
    join_timeout_s: float = Field(600, gt=0, description="Seconds to wait for min_sites to connect.")
    device: str = "cpu"
    package: PackageStart | None = Field(None, description="Start from this model package "
                                         "(coordinator only; see PackageStart).")
    pinned_pipeline: dict[str, Any] | None = Field(
        None, description="The starting package's pinned pipeline (encoder, tiling; filled from "
        "the package): every site refuses to join unless its feature files were made with it.")

    @model_validator(mode="after")
    def _check(self) -> FederationConfig:
        if not self.targets:
            raise ValueError("targets needs at least one head")
        from pathstrat.mil.kinds import KINDS

        if any(KINDS.get(t.kind).needs_time_grid for t in self.targets) and self.time_max is None:
            raise ValueError("discrete survival needs time_max (upper edge of the shared time grid; "
                             "sites histogram their times on it, raw times never leave a site)")
        if self.dp is not None and self.secagg is not None:
            raise ValueError("dp and secagg cannot be combined in this version; choose one")
        return self

    def to_json(self) -> str:
        """What travels to the sites (and into federation.json): the coordinator-side package
        paths are left out; its pinned pipeline stays."""
        return self.model_dump_json(exclude={"package"})

    @classmethod
    def from_json(cls, text: str) -> FederationConfig:
        return _validate(cls, json.loads(text), "federation config")

    @classmethod
    def load(cls, path: str | Path, *, package: str | Path | None = None,
             package_opts: dict[str, Any] | None = None) -> FederationConfig:
        """Read a YAML or JSON file (the ``federation:`` key may wrap it). With a ``package:``
        entry (or ``package``, which overrides its path; ``package_opts`` override its other
        :class:`PackageStart` fields) the package is verified and fills in model, heads, encoder
        and pinned pipeline (:func:`pathstrat.sharing.federate.from_package`)."""
        import yaml

        p = Path(path)
        if not p.exists():
            raise ConfigError(f"Federation config '{p}' does not exist.")
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        data = dict(data.get("federation", data))
        if package is not None or package_opts:
            start = data.get("package")
            start = dict(start) if isinstance(start, dict) else {"path": start} if start else {}
            start.update({k: str(v) if isinstance(v, Path) else v
                          for k, v in (package_opts or {}).items()})
            if package is not None:
                start["path"] = str(package)
            if "path" not in start:
                raise ConfigError(f"Federation config '{p}': package options {sorted(package_opts or {})} "
                                  "need a starting package (--package P or 'package:' in the config).")
            data["package"] = start
        if data.get("package"):
            from pathstrat.sharing.federate import from_package

            data = from_package(data, base=p.parent)
        return _validate(cls, data, str(p))

    def specs(self) -> list:
        """TargetSpecs of the heads (pathstrat.mil.targets)."""
        return [t.spec() for t in self.targets]


class SiteConfig(_Strict):
    """What one site holds locally. Paths never leave the site."""

    name: str = Field(description="Site name shown to the federation (no patient data).")
    manifest: Path
    features_dir: Path = Field(description="Folder of <slide_id>.h5 feature files of encoder_id.")
    require_dp: bool = Field(False, description="Refuse rounds that do not clip updates for DP.")
    device: str | None = Field(None, description="This site's device ('cpu', 'cuda', 'auto'); "
                               "default: the federation's.")
    audit_dir: Path | None = Field(None, description="Write every outgoing message's summary here.")
    cache_dir: Path | None = Field(None, description="Keep a memory-mapped copy of the site's "
                                   "features here, shared by all ClientApp processes (see "
                                   "pathstrat.federated.sitecache). None: no cache; a SuperNode "
                                   "without 'cache-dir' uses the default user cache folder.")
    drop_at_round: int | None = Field(None, ge=1, description="Simulation only: the site fails "
                                      "from this training round on (tests robustness to dropouts).")

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> SiteConfig:
        """From a SuperNode's ``--node-config "manifest='...' features-dir='...'"``."""
        data = {k.replace("-", "_"): v for k, v in node_config.items()
                if k.replace("-", "_") in cls.model_fields}
        data.setdefault("name", str(node_config.get("site-name", node_config.get("name", "site"))))
        if "cache_dir" not in data:  # deployment: every message is a new process -> cache on
            from pathstrat.federated.sitecache import default_cache_dir

            data["cache_dir"] = default_cache_dir()
        elif str(data["cache_dir"]).strip().lower() in ("", "off", "none"):
            data["cache_dir"] = None
        return _validate(cls, data, "SuperNode --node-config")


def _validate(cls, data: Any, where: str):
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"Invalid {where}", cls)) from exc
