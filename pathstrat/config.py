"""Pipeline configuration: a strict pydantic schema for `pathstrat run CONFIG.yaml`.

Each stage section maps 1:1 onto the parameters of that stage's public function (see
docs/architecture.md), so a key in YAML is a keyword argument in code. Unknown keys are
errors that suggest the closest valid key; ``--set a.b=c`` overrides are parsed as YAML
scalars and validated by the same schema.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pathstrat.errors import ConfigError

STAGES = ("tile", "embed", "train", "stratify", "select", "heatmaps", "report")
DEMO_CONFIG = "demo.yaml"
#: ``pathstrat init --template NAME`` -> shipped config file.
TEMPLATES = {"cohort": "example_cohort.yaml", "demo": DEMO_CONFIG}


def shipped_config(name: str) -> Path:
    """A config shipped inside the package (``pathstrat/configs/<name>``, package data).

    Read through ``importlib.resources`` so it is found the same way in a source checkout, an
    editable install and an installed wheel (the repository's ``configs/`` links to it).
    """
    from importlib.resources import files

    res = files("pathstrat") / "configs" / name
    if res.is_file():
        return Path(str(res))
    raise ConfigError(f"Shipped config '{name}' not found in the installed package "
                      "(pathstrat/configs/); reinstall pathstrat.")


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CohortConfig(_Section):
    """Cohort manifest (one row per slide) and its survival/arm columns."""

    manifest: Path = Field(description="CSV or Parquet manifest, one row per slide (relative to the config file).")
    check_files: bool = Field(True, description="Fail early when a slide file is missing (else recorded in failures.csv).")


class TilingConfig(_Section):
    """Parameters of pathstrat.tiling.TilingParams plus the worker count of tile_cohort."""

    target_mpp: float = Field(0.5, gt=0, description="Microns per pixel of the tiles.")
    tile_px: int = Field(224, gt=0, description="Tile edge in pixels at target_mpp.")
    overlap_px: int = Field(0, ge=0, description="Overlap between neighbouring tiles, pixels at target_mpp.")
    min_tissue: float = Field(0.25, ge=0, le=1, description="Minimum tissue fraction a tile must cover.")
    mask_mpp: float = Field(8.0, gt=0, description="Resolution of the tissue mask (µm/px).")
    workers: int = Field(1, ge=1, description="Parallel slide workers on one machine.")

    @model_validator(mode="after")
    def _valid_tiling_params(self) -> TilingConfig:
        """The tiling stage's own rules (e.g. overlap < tile) checked when the config loads, not
        on every slide at stage time."""
        from pathstrat.tiling import TilingParams

        try:
            TilingParams(**self.model_dump(exclude={"workers"}))
        except ValidationError as exc:
            raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
        return self


class EmbedConfig(_Section):
    """Parameters of pathstrat.embed.embed_cohort."""

    encoder_id: str = Field("builtin", description="Encoder id from `pathstrat encoders list`.")
    weights: str | None = Field(None, description="Local weights file/dir, 'random' (tests only) or null = HF cache.")
    batch_size: int = Field(64, ge=1, description="Tiles per forward pass.")
    workers: int = Field(2, ge=0, description="DataLoader workers reading tiles.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    views: int = Field(0, ge=0, description="Augmented feature views stored per slide (0 = none).")
    dtype: str | None = Field(None, description="Compute dtype (null = the encoder spec's).")
    seed: int = Field(0, description="Seed of random init / augmented views.")

    @field_validator("encoder_id")
    @classmethod
    def _registered(cls, v: str) -> str:
        from pathstrat.encoders import get_spec
        from pathstrat.errors import UnknownNameError

        try:
            get_spec(v)
        except UnknownNameError as exc:
            raise ValueError(str(exc)) from None
        return v


RUN_SPECIFIC_TRAIN_KEYS = ("features", "manifest", "out", "encoder_id")


def _train_section() -> type[BaseModel]:
    """The `train:` section: pathstrat.training's own TrainConfig minus the keys the runner sets.

    Built from the training stage's schema so the two never drift: every `pathstrat train`
    option is a `train:` key with the same name, type and default.
    """
    from pydantic import create_model

    from pathstrat.training.config import TrainConfig as StageTrainConfig

    fields = {name: (f.annotation, f) for name, f in StageTrainConfig.model_fields.items()
              if name not in RUN_SPECIFIC_TRAIN_KEYS}
    return create_model("TrainConfig", __base__=_Section,
                        __doc__="Parameters of pathstrat.training.train_cv (features, manifest, "
                                "out and encoder_id are set by the runner).", **fields)


TrainConfig = _train_section()


def stage_train_config(section: BaseModel, **run_keys: Any) -> Any:
    """The training stage's TrainConfig from the `train:` section plus run paths (validated)."""
    from pathstrat.training.config import TrainConfig as StageTrainConfig

    return StageTrainConfig(**section.model_dump(), **run_keys)


class StratifyConfig(_Section):
    """Parameters of pathstrat.survival.stratify (`pathstrat stratify`)."""

    enabled: bool = True
    target: str = Field("survival", description="Prediction target whose score is stratified.")
    score_col: str = Field("risk", description="Column of predictions.csv used as the risk score.")
    time_col: str = Field("time", description="Survival time column of the manifest.")
    event_col: str = Field("event", description="Event column of the manifest (1 = event).")
    cutoff: str = Field("median", description="'median', 'tertiles' or a number (fitted on training folds).")
    arm_col: str | None = Field(None, description="Treatment arm column for the score x arm interaction.")
    covariates: list[str] = Field(default_factory=list, description="Multivariable Cox covariates.")
    td_auc_times: list[float] | None = Field(None, description="Times for time-dependent AUC (null = automatic).")
    agg: str = Field("mean", description="Slide scores -> patient score aggregation.")
    n_boot: int = Field(500, ge=0, description="Bootstrap resamples for confidence intervals.")
    seed: int = 0


class TrialDesignConfig(_Section):
    """Parameters of pathstrat.trial.run_trial_design (`pathstrat trial-design`), run after the
    selection rule from its own selection.json and out-of-fold scores, into ``<run>/trial/``."""

    hr_positive: float = Field(gt=0, description="Treatment hazard ratio in marker-positive patients.")
    hr_negative: float = Field(1.0, gt=0, description="Treatment hazard ratio in marker-negative patients.")
    prevalence: float | None = Field(None, gt=0, le=1, description="Prevalence in the target population (default: the run's).")
    alpha: float = Field(0.05, gt=0, lt=1, description="Two-sided alpha.")
    power: float = Field(0.8, gt=0, lt=1)
    allocation: float = Field(1.0, gt=0, description="Treatment : control allocation ratio.")
    median_control: float = Field(12.0, gt=0, description="Control-arm median survival.")
    accrual: float = Field(24.0, gt=0, description="Accrual duration (uniform accrual).")
    follow_up: float = Field(12.0, ge=0, description="Follow-up after the last patient enters.")
    alpha_split_positive: float = Field(0.5, gt=0, le=1, description="Share of alpha for the model-positive stratum.")
    screening_rate: float | None = Field(None, gt=0, description="Patients screened per time unit.")
    cost_screen: float | None = Field(None, ge=0, description="Cost per screened patient.")
    cost_enrol: float | None = Field(None, ge=0, description="Cost per enrolled patient.")
    simulate: int = Field(0, ge=0, description="Simulated trials per design (0: none).")
    n_draws: int = Field(1000, ge=0, description="Bootstrap draws for the intervals.")
    seed: int = 0


class SelectConfig(_Section):
    """Parameters of pathstrat.selection.run_selection (`pathstrat select`)."""

    enabled: bool = True
    target: str = Field(description="Binary target whose score selects patients.")
    rule: Literal["sensitivity", "specificity", "npv", "ppv"] = Field(
        "sensitivity", description="Which operating point the threshold is chosen for.")
    value: float = Field(0.95, gt=0, lt=1, description="Target value of the rule (e.g. 0.95 sensitivity).")
    label_col: str | None = Field(None, description="Manifest column used as truth (default: y_true).")
    response_col: str | None = Field(None, description="Manifest column whose rate is reported in the selected group.")
    score_col: str = "score"
    trial: TrialDesignConfig | None = Field(None, description="Trial design from this rule (off when absent).")


class HeatmapsConfig(_Section):
    """Parameters of pathstrat.heatmaps.heatmap_run (`pathstrat heatmap`)."""

    enabled: bool = True
    target: str | None = Field(None, description="Target whose scores pick the slides (null = all).")
    n_extreme: int = Field(2, ge=1, description="Highest- and lowest-scored patients whose slides are mapped.")
    top_k: int = Field(8, ge=1, description="Tiles in the top/bottom montages.")
    slides: list[str] | None = Field(None, description="Map these slide ids instead.")


class ReportConfig(_Section):
    """Parameters of pathstrat.report.build_report (`pathstrat report`)."""

    enabled: bool = True
    n_boot: int = Field(200, ge=0, description="Bootstrap resamples for ROC/PR bands.")
    seed: int = 0


class SlurmConfig(_Section):
    """Resources of the Slurm job arrays (submitit)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = Field(240, ge=1, description="Wall time of one array task, minutes.")
    cpus_per_task: int = Field(4, ge=1)
    gpus_per_task: int = Field(0, ge=0, description="GPUs per embedding task (tiling uses none).")
    mem_gb: float = Field(16, gt=0)
    train_gpus: int = Field(0, ge=0, description="GPUs of the dependent training job.")
    max_array_tasks: int = Field(1000, ge=1, le=1000, description="Slides are grouped into at most this many tasks.")
    array_parallelism: int = Field(256, ge=1, description="Tasks running at once (%N).")
    retries: int = Field(1, ge=0, le=3, description="Resubmissions of failed array tasks.")
    poll_s: float = Field(5.0, gt=0, description="Seconds between queue polls.")
    log_dir: Path | None = Field(None, description="submitit folder (default <run>/slurm).")
    setup: list[str] = Field(default_factory=list, description="Shell lines run before each task (module load ...).")
    additional: dict[str, Any] = Field(default_factory=dict, description="Extra sbatch parameters.")


class RayConfig(_Section):
    """Resources of the Ray tasks/actors."""

    address: str | None = Field(None, description="Cluster address ('auto', 'ray://host:10001') or null = local.")
    num_cpus: float = Field(1, gt=0, description="CPUs per tiling task / embedding actor.")
    num_gpus: float = Field(0, ge=0, description="GPUs per embedding actor.")
    actors: int = Field(1, ge=1, description="Embedding actors (model loaded once per actor).")
    local_num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray started by pathstrat.")


class ExecutorConfig(_Section):
    """Where per-slide work (tile, embed) runs."""

    kind: Literal["local", "slurm", "ray"] = "local"
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    ray: RayConfig = Field(default_factory=RayConfig)


class PipelineConfig(_Section):
    """The whole study: cohort, output folder, one section per stage, executor."""

    name: str = "run"
    out_dir: Path = Field(description="Run directory (relative to the config file).")
    tiles_dir: Path | None = Field(None, description="Share tiles across runs (default: out_dir).")
    features_dir: Path | None = Field(None, description="Share features across runs (default: out_dir).")
    stages: list[str] = Field(default_factory=lambda: list(STAGES), description="Stages to run, in order.")
    cohort: CohortConfig
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    train: TrainConfig
    stratify: StratifyConfig | None = Field(None, description="Default: on when 'survival' is a target.")
    predictive: StratifyConfig | None = Field(
        None, description="A second stratification written to <out_dir>/predictive/, typically a "
        "biomarker score x treatment arm (is the score predictive of treatment benefit?).")
    select: SelectConfig | None = Field(None, description="Patient selection rule (off when absent).")
    heatmaps: HeatmapsConfig = Field(default_factory=HeatmapsConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        for s in v:
            if s not in STAGES:
                close = difflib.get_close_matches(s, STAGES, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"unknown stage '{s}'.{hint} Stages: {', '.join(STAGES)}")
        return [s for s in STAGES if s in v]

    @model_validator(mode="before")
    @classmethod
    def _default_stratify(cls, data: Any) -> Any:
        """Stratify survival by default when survival is trained (same time/event columns)."""
        if isinstance(data, dict) and data.get("stratify") is None:
            train = data.get("train")
            if isinstance(train, dict) and "survival" in (train.get("targets") or []):
                data = dict(data, stratify={"time_col": train.get("time_col", "time"),
                                            "event_col": train.get("event_col", "event")})
        return data

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        st = self.stratify
        for name, sec in (("stratify", st), ("predictive", self.predictive)):
            if sec is not None and sec.enabled and sec.target not in self.train.targets:
                raise ValueError(
                    f"{name}.target '{sec.target}' is not among train.targets {self.train.targets}")
        if self.select is not None and self.select.enabled and self.select.target not in self.train.targets:
            raise ValueError(f"select.target '{self.select.target}' is not among train.targets {self.train.targets}")
        try:  # the training stage's own validators (e.g. targets, folds), before any slide work
            stage_train_config(self.train, features="-", manifest="-", out="-")
        except ValidationError as exc:
            raise ValueError("train: " + "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
        return self

    @property
    def run_dir(self) -> Path:
        return self.out_dir

    @property
    def tiles_root(self) -> Path:
        return self.tiles_dir or self.out_dir

    @property
    def features_root(self) -> Path:
        return self.features_dir or self.out_dir


# --------------------------------------------------------------------------------------------
# Loading, overrides, error messages


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config, apply ``--set key=value`` overrides and validate it.

    Relative paths in the config resolve against the config file's folder, so a config and
    its manifest can move together.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file '{p}' does not exist.")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file '{p}' is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file '{p}' must hold a mapping at the top level.")
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw, base_dir=p.resolve().parent, source=str(p))


def validate_config(raw: dict[str, Any], *, base_dir: Path | None = None,
                    source: str = "config") -> PipelineConfig:
    """Validate a raw mapping; turn pydantic errors into one ConfigError with suggestions."""
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    if base_dir is not None:
        _resolve_paths(cfg, base_dir)
    return cfg


def _resolve_paths(cfg: PipelineConfig, base: Path) -> None:
    def res(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = Path(os.path.expanduser(str(p)))
        return p if p.is_absolute() else (base / p).resolve()

    cfg.out_dir = res(cfg.out_dir)
    cfg.tiles_dir = res(cfg.tiles_dir)
    cfg.features_dir = res(cfg.features_dir)
    cfg.cohort.manifest = res(cfg.cohort.manifest)
    if cfg.embed.weights not in (None, "random"):
        cfg.embed.weights = str(res(Path(cfg.embed.weights)))
    cfg.executor.slurm.log_dir = res(cfg.executor.slurm.log_dir)


def parse_value(text: str) -> Any:
    """Parse an override value as a YAML scalar/list (``5`` -> int, ``[a,b]`` -> list)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override to the raw mapping in place."""
    if "=" not in item:
        raise ConfigError(f"Override '{item}' must look like key.subkey=value (e.g. train.folds=3).")
    key, _, text = item.partition("=")
    parts = [k for k in key.strip().split(".") if k]
    if not parts:
        raise ConfigError(f"Override '{item}' has an empty key.")
    model: type[BaseModel] | None = PipelineConfig
    node = raw
    for i, k in enumerate(parts):
        if model is not None:
            fields = model.model_fields
            if k not in fields:
                prefix = ".".join(parts[:i])
                raise ConfigError(_unknown_key_msg(k, list(fields), prefix, f"--set {item}"))
            model = _submodel(fields[k].annotation)
        if i == len(parts) - 1:
            node[k] = parse_value(text)
        else:
            nxt = node.get(k)
            if not isinstance(nxt, dict):
                nxt = {}
                node[k] = nxt
            node = nxt


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``X``, ``X | None``), else None."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = PipelineConfig
    for k in loc:
        if model is None or not isinstance(k, str) or k not in model.model_fields:
            return None
        model = _submodel(model.model_fields[k].annotation)
    return model


def _unknown_key_msg(key: str, known: list[str], prefix: str, source: str) -> str:
    where = f"{prefix}." if prefix else ""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f" Did you mean '{where}{close[0]}'?" if close else ""
    return f"{source}: unknown key '{where}{key}'.{hint} Valid keys here: {', '.join(sorted(known))}."


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden" and loc:
            model = _model_at(loc[:-1])
            known = list(model.model_fields) if model else []
            lines.append(_unknown_key_msg(str(loc[-1]), known, ".".join(map(str, loc[:-1])), source))
        else:
            where = ".".join(map(str, loc)) or "(top level)"
            lines.append(f"{source}: {where}: {err['msg']}")
    return " ".join(lines)


def dump_config(cfg: PipelineConfig) -> str:
    """The resolved config as YAML (every default written out), for the run directory."""
    import yaml

    data = cfg.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False)


def section_hash(cfg: PipelineConfig, *sections: str, extra: dict[str, Any] | None = None) -> str:
    """Parameters hash of some config sections (what decides whether a stage is rerun)."""
    from pathstrat.io import params_hash

    data = {s: getattr(cfg, s).model_dump(mode="json") if getattr(cfg, s) is not None else None
            for s in sections}
    data.update(extra or {})
    return params_hash(data)
