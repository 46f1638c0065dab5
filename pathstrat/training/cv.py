"""`train_cv`: patient-grouped cross-validation of a MIL model, writing the run directory."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pathstrat.errors import ConfigError
from pathstrat.io import (
    FailureLog,
    OutputDirError,
    atomic_path,
    clean_stale_tmp,
    ensure_writable_dir,
    sha256_file,
    write_dataframe_atomic,
    write_json_atomic,
    write_text_atomic,
)
from pathstrat.logs import log_to_file
from pathstrat.mil import build_model
from pathstrat.mil.losses import make_loss
from pathstrat.mil.scaling import fit_scaler, set_scaler
from pathstrat.mil.targets import TargetSpec, infer_target
from pathstrat.training.config import TrainConfig
from pathstrat.training.data import (
    BUCKET_AUTO_RATIO,
    BagDataset,
    BagStore,
    load_bags,
    make_eval_loader,
    make_loader,
)
from pathstrat.training.engine import TrainParams, evaluate, fit, resolve_device, set_seed
from pathstrat.training.evaluation import (
    BASE_COLUMNS,
    compute_metrics,
    decode_outputs,
    epoch_metric,
    prediction_rows,
    write_attention,
)
from pathstrat.training.parallel import in_worker, map_folds, resolve_workers
from pathstrat.training.splits import check_no_overlap, inner_split, make_splits, strata

log = logging.getLogger(__name__)


def build_specs(df: pd.DataFrame, cfg: TrainConfig) -> list[TargetSpec]:
    """Target specs from the CLI/config target names (kinds inferred from the manifest)."""
    specs = [infer_target(df, t, time_col=cfg.time_col, event_col=cfg.event_col,
                          survival_loss=cfg.survival_loss, n_bins=cfg.n_bins) for t in cfg.targets]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"Targets {names} repeat a name; list each target once.")
    return specs


def _strat(spec: TargetSpec) -> tuple[str | None, str | None]:
    return spec.impl.strata(spec)


def _load(cfg: TrainConfig, failures: FailureLog) -> tuple[BagStore, list[TargetSpec]]:
    from pathstrat.cohort import check_spec_targets, load_manifest

    df = load_manifest(cfg.manifest, check_files=False)
    specs = build_specs(df, cfg)
    df = check_spec_targets(df, specs, source=f"manifest '{cfg.manifest}'", training=True)
    specs = build_specs(df, cfg)  # on the validated values (times numeric, events 0/1)
    store = load_bags(df, cfg.features, level=cfg.level, store=cfg.store,
                      cache_dir=Path(cfg.out) / "cache", expected_encoder=cfg.encoder_id,
                      failures=failures)
    return store, specs


#: What a training run writes into its run directory (model.json is written last and removed
#: first: a folder without it is an incomplete run that predict/report refuse).
RUN_OUTPUTS = ("checkpoints/model.json", "checkpoints", "attention", "predictions.csv",
               "train_scores.csv", "metrics.json", "metrics_folds.csv", "folds.csv", "history.csv",
               "cache")


def previous_run_outputs(out: Path) -> list[Path]:
    """A previous training run's outputs in ``out`` (empty when there is none)."""
    return [out / n for n in RUN_OUTPUTS if (out / n).exists()]


def clear_previous_run(out: Path) -> None:
    """Remove a previous run's outputs, ``model.json`` first, so an interrupted rerun never
    leaves old metrics beside new checkpoints under a valid ``model.json``."""
    import shutil

    for p in previous_run_outputs(out):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def train_cv(config: TrainConfig | dict[str, Any] | None = None, *, overwrite: bool = False,
             **kwargs: Any) -> Path:
    """Train and evaluate ``config.model`` with patient-grouped CV; return the run directory.

    Keyword arguments mirror the CLI (``features, manifest, targets, model, folds, repeats, seed,
    out, time_col, event_col`` ...) and override ``config``. Writes config.yaml, folds.csv,
    predictions.csv (out of fold), train_scores.csv (each fold model's scores of its own training
    patients, for cut-offs fitted on training folds), metrics.json, metrics_folds.csv,
    checkpoints/, attention/, run.log.
    """
    base = config.model_dump() if isinstance(config, TrainConfig) else dict(config or {})
    cfg = TrainConfig(**{**base, **kwargs})
    old = previous_run_outputs(Path(cfg.out))
    if old and not overwrite:
        raise OutputDirError(f"Output directory '{cfg.out}' already holds a training run "
                             f"({', '.join(p.name for p in old[:4])}); writing another run into it "
                             "would mix the two. Choose a new `out`, or pass `overwrite` to replace "
                             "that run.")
    out = ensure_writable_dir(cfg.out)
    if old:
        clear_previous_run(out)
        log.info("removed the previous run's outputs in %s (--overwrite)", out)
    clean_stale_tmp(out)
    threads = torch.get_num_threads()
    try:
        with log_to_file(out / "run.log", mode="w"):
            return _run(cfg, out)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: TrainConfig, out: Path) -> Path:
    import yaml

    write_text_atomic(out / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    failures = FailureLog(out / "failures.csv", "train")
    store, specs = _load(cfg, failures)
    table = store.table
    strat_col, strat_kind = _strat(specs[0])
    folds = make_splits(table, folds=cfg.folds, repeats=cfg.repeats, seed=cfg.seed,
                        strat_col=strat_col, strat_kind=strat_kind, split_col=cfg.split_col)
    write_dataframe_atomic(out / "folds.csv", folds)
    device = resolve_device(cfg.device)
    _maybe_preload(store, device)
    _set_threads(cfg, store, device)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    tasks = _fold_tasks(cfg, folds, table, specs[0])
    fold_threads = torch.get_num_threads()
    workers, why = resolve_workers(
        cfg.workers, n_units=len(tasks), device=device, fold_threads=int(cfg.threads or fold_threads),
        tile_epochs=_tile_epochs(cfg, store, tasks), store_bytes=store.nbytes,
        shared_store=bool(store.attrs.get("cache")))
    if workers > 1:
        log.info("%d folds in %d worker processes (%s), %d thread(s) each", len(tasks), workers, why,
                 int(cfg.threads or 1))
    elif why.startswith("device"):
        log.info("%s", why)
    context = FoldContext(cfg, store, specs, device)
    hist_rows: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    train_rows: list[dict[str, Any]] = []
    fold_entries: list[dict[str, Any]] = []
    hparams: dict[str, Any] = {}
    results = map_folds(train_fold, tasks, workers=workers, context=context,
                        make_context=partial(FoldContext, cfg, specs=specs, device=device),
                        store=store, threads=int(cfg.threads or 1), describe=lambda t: t.where)
    for t, res in zip(tasks, results, strict=True):  # in fold order, whatever finished first
        r, k = t.repeat, t.fold
        hist_rows += res.hist_rows
        rows += res.rows
        train_rows += res.train_rows
        hparams = res.hparams
        if res.attention is not None:
            ev = res.attention
            write_attention(out / "attention", store, ev.index, ev.attention, ev.attention_branches,
                            {"model": cfg.model, "fold": k, "repeat": r,
                             "targets": [s.name for s in specs]}, ev.branch_names)
        name = f"fold{k}" + (f"_r{r}" if cfg.repeats > 1 else "")
        fold_entries.append(_save_checkpoint(ckpt_dir, name, res.tensors, cfg, r, k,
                                             np.concatenate([t.train_p, t.val_p]), res.states,
                                             res.history))
        fold_entries[-1]["validation_patient_ids"] = sorted(map(str, t.val_p))
        log.info("repeat %d fold %d: %d train / %d val / %d test bags, %d epochs, test %s %.3f",
                 r, k, len(t.tr_idx), len(t.va_idx), len(t.te_idx), len(res.history),
                 res.metric_name, res.metric)
    pred = _predictions_frame(rows)
    write_dataframe_atomic(out / "predictions.csv", pred)
    write_dataframe_atomic(out / "train_scores.csv", _predictions_frame(train_rows))
    write_dataframe_atomic(out / "history.csv", _history_frame(hist_rows))
    metrics, per_fold = compute_metrics(pred, specs, n_boot=cfg.n_boot, seed=cfg.seed)
    write_json_atomic(out / "metrics.json", metrics)
    write_dataframe_atomic(out / "metrics_folds.csv", per_fold)
    write_json_atomic(ckpt_dir / "model.json", {
        "model": cfg.model, "hparams": hparams, "in_dim": store.dim,
        "encoder_id": store.encoder_id, "level": cfg.level,
        "targets": [s.to_dict() for s in specs], "folds": fold_entries,
        "input_scaling": {"method": _scaling_method(cfg, store),
                          "fitted_on": "the training patients of each fold (never validation/test)",
                          "stored_as": "input_mean / input_inv_std buffers in each checkpoint",
                          "init_weights": bool(cfg.init_weights)},
        **_training_content(store, fold_entries),
        "schema": "pathstrat.mil_run/1"})
    if len(failures):
        failures.write()
    cache = store.attrs.get("cache")
    if cache:  # the memory-mapped feature cache is rebuilt by each run; do not leave it behind
        Path(cache).unlink(missing_ok=True)
    log.info("run written to %s", out)
    return out


@dataclass
class FoldTask:
    """One (repeat, fold) unit: its seed and its bags (indices into the store)."""

    repeat: int
    fold: int
    seed: int
    train_p: np.ndarray
    val_p: np.ndarray
    tr_idx: np.ndarray
    va_idx: np.ndarray
    te_idx: np.ndarray

    @property
    def where(self) -> str:
        return f"repeat {self.repeat}, fold {self.fold}"


@dataclass
class FoldContext:
    """What every fold of a run shares (built once per worker process)."""

    cfg: TrainConfig
    store: BagStore
    specs: list[TargetSpec]
    device: str


@dataclass
class FoldResult:
    """What a fold returns to the parent, which writes it (workers write no file)."""

    history: list[dict[str, Any]]
    hist_rows: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    train_rows: list[dict[str, Any]]
    tensors: dict[str, np.ndarray]  # the model's state dict (CPU, as numpy: picklable)
    states: dict[str, Any]
    hparams: dict[str, Any]
    metric_name: str
    metric: float
    attention: Any = None  # the test pass (EvalResult) when its attention is saved


def _fold_tasks(cfg: TrainConfig, folds: pd.DataFrame, table: pd.DataFrame,
                spec: TargetSpec) -> list[FoldTask]:
    """Every (repeat, fold) unit in order, with its training/validation/test bags."""
    pid = table["patient_id"].astype(str)
    tasks = []
    for (r, k), test_df in folds.groupby(["repeat", "fold"], sort=True):
        seed = cfg.seed + 1000 * int(r) + int(k)
        if "role" in test_df.columns:  # fixed split: the fold holds every patient with a role
            test_df = test_df[test_df["role"] == "test"]
        test_p = set(test_df["patient_id"].astype(str))
        train_p, val_p = _train_val_patients(cfg, folds, table, spec, int(r), test_p, seed)
        check_no_overlap(np.concatenate([train_p, val_p]), test_p, f"repeat {r}, fold {k}")
        tasks.append(FoldTask(int(r), int(k), seed, train_p, val_p,
                              np.nonzero(pid.isin(set(train_p)).to_numpy())[0],
                              np.nonzero(pid.isin(set(val_p)).to_numpy())[0],
                              np.nonzero(pid.isin(test_p).to_numpy())[0]))
    return tasks


def _tile_epochs(cfg: TrainConfig, store: BagStore, tasks: list[FoldTask]) -> int:
    """Tiles trained on over the whole run (at most ``max_tiles`` per bag and epoch)."""
    cap = cfg.max_tiles or 2**62
    sizes = np.array([min(b.features.shape[0], cap) for b in store.bags], np.int64)
    return int(sum(sizes[t.tr_idx].sum() for t in tasks) * cfg.epochs)


def train_fold(ctx: FoldContext, t: FoldTask) -> FoldResult:
    """Train and evaluate one fold (here, or in a worker process: the same computation)."""
    cfg, store, specs, device = ctx.cfg, ctx.store, ctx.specs, ctx.device
    table = store.table
    r, k, seed, tr_idx, va_idx, te_idx = t.repeat, t.fold, t.seed, t.tr_idx, t.va_idx, t.te_idx
    balanced = cfg.class_weighting == "balanced"
    states = {s.name: s.fit_raw(table.iloc[tr_idx], balanced) for s in specs}
    y = {s.name: s.encode(table, states[s.name]) for s in specs}
    set_seed(seed)
    model = build_model(cfg.model, store.dim, {s.name: s.n_outputs for s in specs}, **cfg.hparams)
    scaling = _scaling_method(cfg, store)
    if scaling == "standardize":  # statistics of this fold's training patients only
        set_scaler(model, *fit_scaler((store.bags[i].features for i in tr_idx), store.dim))
    if cfg.init_weights:  # fine-tuning keeps the package's weights and input scaling
        start_from(model, cfg.init_weights, cfg.trainable)
    hparams = {**model.spec.defaults, **cfg.hparams}
    if hasattr(model, "attention_mode"):  # record the resolved mode ("auto" -> per_target/shared)
        hparams["attention"] = model.attention_mode
    loss_fn = make_loss(specs, states, weighting=cfg.class_weighting, ties=cfg.ties,
                        task_weights=cfg.task_weights)
    train_loader = make_loader(
        BagDataset(store, tr_idx, y, max_tiles=cfg.max_tiles, train=True, seed=seed),
        cfg.batch_size, shuffle=True, seed=seed, pin_memory=device.startswith("cuda") and not store.on_device,
        bucket={"on": True, "off": False}.get(cfg.bucket, "auto"),
        balance_on=(y[specs[0].name][tr_idx] if cfg.balanced_sampling
                    and specs[0].impl.categorical else None))
    val_loader = (make_eval_loader(BagDataset(store, va_idx, y)) if len(va_idx) else None)
    params = TrainParams(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         schedule=cfg.schedule, patience=cfg.patience, grad_clip=cfg.grad_clip,
                         device=device, amp=cfg.amp, where=t.where,
                         max_padding=None if cfg.bucket == "off" else BUCKET_AUTO_RATIO,
                         progress=not in_worker())
    metric_name, metric_fn = epoch_metric(specs[0], y[specs[0].name], states[specs[0].name])
    history = fit(model, train_loader, val_loader, loss_fn, params, metric_fn=metric_fn)
    hist_rows = [{"repeat": r, "fold": k, "metric": metric_name, **h} for h in history]
    keep_att = cfg.save_attention and r == 0
    ev = evaluate(model, make_eval_loader(BagDataset(store, te_idx, y)), device=device,
                  amp=cfg.amp, keep_attention=keep_att)
    scores = decode_outputs(specs, ev.outputs, states)
    rows = prediction_rows(store, ev.index, scores, specs, fold=k, repeat=r)
    # The fold model's scores of its own training patients: risk-group cut-offs are fitted
    # on these (same model, same scale) and applied to the held-out fold, never on it.
    fit_idx = np.concatenate([tr_idx, va_idx])
    ev_fit = evaluate(model, make_eval_loader(BagDataset(store, fit_idx, y)), device=device, amp=cfg.amp)
    train_rows = prediction_rows(store, ev_fit.index, decode_outputs(specs, ev_fit.outputs, states),
                                 specs, fold=k, repeat=r)
    tensors = {n: v.detach().cpu().contiguous().clone().numpy() for n, v in model.state_dict().items()}
    return FoldResult(history, hist_rows, rows, train_rows, tensors, states, hparams, metric_name,
                      float(metric_fn(ev.index, ev.outputs)), ev if keep_att else None)


def _training_content(store: BagStore, fold_entries: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Slide ids and feature-content prints of every slide some fold model was trained on (the
    leakage guard of `predict` compares patients, slides and content)."""
    trained = set().union(*(f["training_patient_ids"] for f in fold_entries))
    slides = sorted(s for b in store.bags if b.patient_id in trained for s in b.slide_ids)
    prints = store.attrs.get("fingerprints", {})
    return {"training_slide_ids": slides,
            "training_fingerprints": sorted({prints[s] for s in slides if s in prints})}


#: Parameters of the input projection (frozen unless ``trainable="all"``); heads are ``heads.*``.
_PROJECTION_PREFIXES = ("proj.", "fc.")


def _scaling_method(cfg: TrainConfig, store: BagStore) -> str:
    """``standardize`` or ``none``: ``auto`` standardises unless the encoder's spec (or every
    feature file's ``features_normalized`` attribute) says its features are already normalised (and a fine-tuned model keeps its package's scaling)."""
    if cfg.input_scaling != "auto":
        return cfg.input_scaling
    if store.attrs.get("features_normalized", False):  # every feature file declares it
        return "none"
    if store.encoder_id:
        from pathstrat.encoders.spec import SPECS

        if store.encoder_id in SPECS and SPECS.get(store.encoder_id).features_normalized:
            return "none"
    return "standardize"


def start_from(model: torch.nn.Module, weights: str | os.PathLike, trainable: str = "all") -> None:
    """Load ``weights`` (safetensors, same architecture) into ``model`` and freeze what
    ``trainable`` excludes: ``head`` trains only ``heads.*``; ``attention`` also the aggregator
    (attention, transformer layers), not the input projection; ``all`` trains everything."""
    from safetensors.torch import load_file

    from pathstrat.errors import WeightsError

    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"'{weights}' does not fit the model (missing {list(missing)[:5]}, "
                           f"unexpected {list(unexpected)[:5]}): fine-tune with the package's own "
                           "architecture and hyperparameters.")
    for name, p in model.named_parameters():
        if trainable == "head":
            p.requires_grad_(name.startswith("heads."))
        elif trainable == "attention":
            p.requires_grad_(not name.startswith(_PROJECTION_PREFIXES))


#: Elements of a padded CPU batch below which training runs on one thread (measured in
#: docs/mil.md: 8 bags x 40 tiles x 166 features steps 10x faster on 1 thread than on 2).
SMALL_BATCH_ELEMENTS = 4_000_000


def _set_threads(cfg: TrainConfig, store: BagStore, device: str) -> None:
    """``cfg.threads``, or on CPU one thread when a typical batch is small."""
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
        return
    if device != "cpu" or not store.bags:
        return
    sizes = sorted(b.features.shape[0] for b in store.bags)
    tiles = min(sizes[len(sizes) // 2], cfg.max_tiles or sizes[-1])
    if tiles * store.dim * cfg.batch_size < SMALL_BATCH_ELEMENTS:
        torch.set_num_threads(1)
        log.info("small bags on CPU: training on 1 thread (--threads to change)")


HISTORY_COLUMNS = ["repeat", "fold", "epoch", "metric", "train_loss", "val_loss", "train_metric",
                   "val_metric", "best"]


def _history_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``history.csv``: one row per (repeat, fold, epoch); val columns empty without validation."""
    h = pd.DataFrame(rows)
    for c in HISTORY_COLUMNS:
        if c not in h.columns:
            h[c] = np.nan
    h["best"] = [v is True for v in h["best"]]
    return h[HISTORY_COLUMNS]


def _maybe_preload(store: BagStore, device: str) -> None:
    """On CUDA, keep the whole cohort's features on the GPU when they use < 40% of free memory."""
    if not device.startswith("cuda") or store.attrs.get("cache"):
        return
    free, _ = torch.cuda.mem_get_info()
    if store.nbytes < 0.4 * free:
        store.to(device)
        log.info("features preloaded on %s (%.2f GiB)", device, store.nbytes / 2**30)


def _train_val_patients(cfg: TrainConfig, folds: pd.DataFrame, table: pd.DataFrame,
                        spec: TargetSpec, r: int, test_p: set[str], seed: int):
    """Training and inner-validation patients of one fold (fixed roles or a stratified split)."""
    if "role" in folds.columns:
        train_p = folds.loc[folds["role"] == "train", "patient_id"].astype(str).to_numpy()
        val_p = folds.loc[folds["role"] == "val", "patient_id"].astype(str).to_numpy()
        if len(val_p) or _val_fraction(cfg, len(train_p)) <= 0:
            return train_p, val_p
        rest = train_p
    else:
        rest = folds.loc[(folds["repeat"] == r) & ~folds["patient_id"].isin(test_p),
                         "patient_id"].astype(str).to_numpy()
    frac = _val_fraction(cfg, len(rest))
    if frac <= 0:
        return rest, rest[:0]
    pat = table.drop_duplicates("patient_id").set_index(table.drop_duplicates("patient_id")["patient_id"].astype(str))
    col, kind = _strat(spec)
    s = strata(pat.loc[rest].reset_index(drop=True), col, kind)
    return inner_split(rest, s, frac, seed)


def _val_fraction(cfg: TrainConfig, n_train_patients: int) -> float:
    """``val_fraction``, or auto: 0.2 from ``early_stop_min_patients`` training patients, else 0."""
    if cfg.val_fraction is not None:
        return float(cfg.val_fraction)
    return 0.2 if n_train_patients >= cfg.early_stop_min_patients else 0.0


def _predictions_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    pred = pd.DataFrame(rows)
    extra = [c for c in pred.columns if c not in BASE_COLUMNS]
    return pred[[c for c in BASE_COLUMNS if c in pred.columns] + extra]


def _save_checkpoint(ckpt_dir: Path, name: str, arrays: dict[str, np.ndarray], cfg: TrainConfig,
                     r: int, k: int, training_patients: np.ndarray, states: dict[str, Any],
                     history: list[dict[str, Any]]) -> dict[str, Any]:
    tensors = {n: torch.from_numpy(a) for n, a in arrays.items()}
    path = ckpt_dir / f"{name}.safetensors"
    save_checkpoint_file(path, tensors, {"model": cfg.model, "fold": str(k), "repeat": str(r)})
    return {"name": name, "file": path.name, "sha256": sha256_file(path), "repeat": r, "fold": k,
            "training_patient_ids": sorted(map(str, training_patients)), "target_state": states,
            "epochs_trained": len(history),
            "best_val_loss": min((h["val_loss"] for h in history if "val_loss" in h), default=None)}


def save_checkpoint_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically with byte-stable content for the same tensors.

    safetensors serialises a metadata map in hash order (different bytes per process), so the
    metadata is stored as one key, ``pathstrat``, holding sorted JSON.
    """

    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"pathstrat": json.dumps(metadata, sort_keys=True)})
