"""`TrainConfig`: every key of `pathstrat train` (CLI flags and config files set the same keys)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TrainConfig(BaseModel):
    """Cross-validated MIL training run (see docs/architecture.md, "Run directory")."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    features: str = Field(description="Folder of <slide_id>.h5 feature files (features/<encoder_id>).")
    manifest: str = Field(description="Cohort manifest CSV/Parquet (slide_id, patient_id, labels).")
    targets: list[str] = Field(description="Label columns; 'a,b' = multi-label; 'col:kind' forces a "
                               "kind; 'survival' uses time_col/event_col.")
    out: str = Field(description="Run directory to write.")
    model: str = "abmil"
    folds: int = 5
    repeats: int = 1
    seed: int = 0
    time_col: str | None = None
    event_col: str | None = None
    survival_loss: Literal["cox", "discrete"] = "cox"
    ties: Literal["efron", "breslow"] = "efron"
    n_bins: int = 4
    split_col: str | None = None
    level: Literal["slide", "patient"] = "slide"
    store: Literal["memory", "mmap"] = "memory"
    max_tiles: int | None = 1024
    epochs: int = 30
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 1e-2
    schedule: Literal["cosine", "onecycle", "constant"] = Field(
        "constant", description="Learning rate over the epochs of a fold; constant = AdamW at lr "
        "throughout (measured best on small cohorts, docs/mil.md).")
    patience: int = 8
    val_fraction: float | None = Field(None, description="Patients of each training fold held out "
                                       "for early stopping; None = auto: 0.2 when the training "
                                       "fold has >= early_stop_min_patients patients, else 0 "
                                       "(fixed epochs; docs/mil.md).")
    early_stop_min_patients: int = Field(
        300, ge=0, description="Training-fold patients from which auto val_fraction holds out 0.2 for "
        "early stopping; below, fixed epochs on every training patient (docs/mil.md).")
    class_weighting: Literal["balanced", "none"] = "balanced"
    balanced_sampling: bool = False
    grad_clip: float | None = 1.0
    hparams: dict[str, Any] = Field(default_factory=dict)
    task_weights: dict[str, float] = Field(default_factory=dict)
    device: str = "auto"
    amp: bool = True
    n_boot: int = 1000
    save_attention: bool = True
    encoder_id: str | None = None
    input_scaling: Literal["auto", "standardize", "none"] = Field(
        "auto", description="Per-feature standardisation fitted on each fold's training patients "
        "and stored in the checkpoint; auto = on unless the encoder's features are normalised.")
    init_weights: str | None = Field(None, description="safetensors file every fold model starts "
                                     "from (fine-tuning a packaged model); same architecture.")
    trainable: Literal["all", "attention", "head"] = Field(
        "all", description="With init_weights: train everything, the aggregator and heads, or the "
        "heads only (the rest frozen).")
    bucket: Literal["auto", "on", "off"] = Field(
        "auto", description="Training batches of bags of similar length (less padding); auto = on "
        "when random batches would pad to > 1.2x the unpadded compute.")
    threads: int | None = Field(None, description="CPU threads for training; None = auto: 1 when "
                                "a batch is small (intra-op threading costs more than it saves), "
                                "else torch's default.")
    workers: int | Literal["auto"] | None = Field(
        None, description="Folds (repeat x fold units) trained at once in worker processes; "
        "None/auto = on CPU, when folds train on one thread and the run is not a few seconds "
        "long, min(folds, CPUs, 8) (fewer if an in-memory store's copies would not fit in half "
        "the free memory); 1 = one after another in this process. Results do not depend on it.")

    @field_validator("targets")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one target is required (`targets`)")
        return v

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be >= 1 (1 = folds one after another), or auto")
        return v

    @field_validator("folds", "repeats", "epochs", "batch_size", "n_bins")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v
