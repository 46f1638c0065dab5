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
from pathstrat.vocabulary import brief_errors, format_validation_error, unknown_key_message

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


def stage_section(name: str, params: type[BaseModel], doc: str, *, exclude: tuple[str, ...] = (),
                  **extra: Any) -> type[BaseModel]:
    """A config section built from a stage's own parameter class, so the two never drift.

    Every field of ``params`` (minus ``exclude``: keys the runner sets) is a key with the same
    name, type, default and constraints; ``extra`` adds run-only keys (``name=(type, Field)``).
    The class's cross-field rules (e.g. overlap < tile) run as well, when the config loads, so
    an invalid value fails there with the section and field named, never on every slide at
    stage time.
    """
    from pydantic import create_model

    own = {k: (f.annotation, f) for k, f in params.model_fields.items() if k not in exclude}
    keys = tuple(own)

    def _stage_rules(self: BaseModel) -> BaseModel:
        try:
            params.model_validate({k: getattr(self, k) for k in keys}
                                  | {k: "-" for k in exclude if params.model_fields[k].is_required()})
        except ValidationError as exc:
            raise ValueError(brief_errors(exc)) from None
        return self

    validators: dict[str, Any] = {"_stage_rules": model_validator(mode="after")(_stage_rules)}
    for vname, dec in params.__pydantic_decorators__.field_validators.items():
        fields = [f for f in dec.info.fields if f in keys]
        if fields:  # per-field rules report the field itself (e.g. embed.device)
            validators[vname] = field_validator(*fields, mode=dec.info.mode)(staticmethod(getattr(params, vname)))
    return create_model(name, __base__=_Section, __doc__=doc, __validators__=validators,
                        **own, **extra)


def _tiling_params() -> type[BaseModel]:
    from pathstrat.tiling import TilingParams

    return TilingParams


def _embed_params() -> type[BaseModel]:
    from pathstrat.encoders.embed import EmbedParams

    return EmbedParams


def _train_params() -> type[BaseModel]:
    from pathstrat.training.config import TrainConfig as StageTrainConfig

    return StageTrainConfig


TilingConfig = stage_section(
    "TilingConfig", _tiling_params(),
    "Parameters of pathstrat.tiling.TilingParams plus the worker count of tile_cohort.",
    workers=(int, Field(1, ge=1, description="Parallel slide workers on one machine (the local "
                        "pool executor).")))

EmbedConfig = stage_section(
    "EmbedConfig", _embed_params(),
    "Parameters of pathstrat.encoders.embed.embed_cohort (pathstrat.encoders.embed.EmbedParams).")

RUN_SPECIFIC_TRAIN_KEYS = ("features", "manifest", "out", "encoder_id")

TrainConfig = stage_section(
    "TrainConfig", _train_params(),
    "Parameters of pathstrat.training.train_cv (features, manifest, out and encoder_id are set by "
    "the runner).", exclude=RUN_SPECIFIC_TRAIN_KEYS)


def stage_train_config(section: BaseModel, **run_keys: Any) -> Any:
    """The training stage's TrainConfig from the `train:` section plus run paths (validated)."""
    return _train_params()(**section.model_dump(), **run_keys)


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


def _executor_section() -> type[BaseModel]:
    """The `executor:` section: ``kind`` plus each registered executor's own section.

    Built from the executor registry (:func:`pathstrat.executors.executor_classes`), so an
    executor added as one module under ``pathstrat/executors/`` gets its ``executor.<name>:``
    keys here without editing this file.
    """
    from pydantic import create_model

    from pathstrat.executors import executor_classes

    classes = executor_classes()
    names = list(classes)

    def _known(cls: type[BaseModel], v: str) -> str:
        if v not in names:
            close = difflib.get_close_matches(v, names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown executor '{v}'.{hint} Executors: {', '.join(names)}")
        return v

    sections = {name: (c.Config, Field(default_factory=c.Config)) for name, c in classes.items()
                if c.Config is not None}
    return create_model(
        "ExecutorConfig", __base__=_Section,
        __doc__="Where per-slide work (tile, embed) runs, and each executor's settings.",
        __validators__={"_known": field_validator("kind")(_known)},
        kind=(str, Field("local", description=f"Executor: {', '.join(names)}.")), **sections)


ExecutorConfig = _executor_section()


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
        raise ConfigError(format_validation_error(exc, source, PipelineConfig)) from None
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
    for name in type(cfg.executor).model_fields:  # executor folders (e.g. slurm.log_dir)
        sec = getattr(cfg.executor, name)
        for key, f in (type(sec).model_fields.items() if isinstance(sec, BaseModel) else ()):
            if f.annotation in (Path, Path | None):
                setattr(sec, key, res(getattr(sec, key)))


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
                raise ConfigError(unknown_key_message(k, list(fields), prefix, f"--set {item}"))
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
