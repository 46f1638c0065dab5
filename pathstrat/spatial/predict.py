"""Expression from morphology: the H&E-to-expression benchmark protocol on spot embeddings.

Targets are log1p-normalised counts (``normalize_total`` to 10,000 then ``log1p``, as scanpy)
of the top-N highly variable genes (scanpy ``flavor="seurat"``) or a given gene list.
Models (``SPATIAL_MODELS``): ``ridge`` (standardise -> PCA -> ridge, the benchmark reference),
``mlp`` (PCA -> one hidden layer, early stopping) and ``ridge_smooth`` (ridge on embeddings
averaged with Gaussian weights over neighbouring spots of the same sample). Cross-validation
folds are by patient; per-gene Pearson/Spearman carry patient-bootstrap CIs
(:func:`pathstrat.metrics.bootstrap_ci`). A fitted model is plain arrays in one ``.npz``
(no pickle), so it loads anywhere numpy does.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.errors import ConfigError, SchemaError
from pathstrat.io import atomic_path
from pathstrat.registry import Registry

log = logging.getLogger(__name__)

MODEL_SCHEMA = "pathstrat.spatial-model/1"
TARGET_SUM = 1e4
DEFAULT_SMOOTH_UM = 100.0
DEFAULT_LEVEL_QUANTILE = 0.75


# ---------------------------------------------------------------------------------------------
# targets


def log1p_normalise(counts: Any, target_sum: float = TARGET_SUM) -> np.ndarray:
    """Dense ``log1p(counts / total * target_sum)`` per spot (scanpy normalize_total + log1p)."""
    from scipy import sparse

    x = counts.toarray() if sparse.issparse(counts) else np.asarray(counts)
    x = x.astype(np.float64)
    tot = x.sum(axis=1, keepdims=True)
    tot[tot == 0] = 1.0
    return np.log1p(x / tot * target_sum)


def select_genes(adata: Any, n_top: int = 50, genes: Sequence[str] | None = None,
                 n_bins: int = 20) -> list[str]:
    """The given genes (checked against ``var_names``) or the top ``n_top`` HVGs.

    HVGs: scanpy ``highly_variable_genes(flavor="seurat", n_bins=n_bins)`` on the
    log1p-normalised counts, ranked by normalised dispersion. With few genes (a panel, or
    generated data) ``n_bins=1`` ranks by raw dispersion instead of within mean bins.
    """
    if genes:
        missing = [g for g in genes if g not in adata.var_names]
        if missing:
            raise ConfigError(f"genes {missing[:5]} are not in the samples' genes; check "
                              "`genes` (names as in var_names, e.g. features.tsv 'name')")
        return list(genes)
    from pathstrat.errors import import_optional

    sc = import_optional("scanpy", "spatial", "selecting highly variable genes")
    tmp = sc.AnnData(log1p_normalise(adata.layers["counts"] if "counts" in adata.layers
                                     else adata.X).astype(np.float32),
                     var=pd.DataFrame(index=adata.var_names))
    n = min(int(n_top), tmp.n_vars)
    sc.pp.highly_variable_genes(tmp, n_top_genes=n, flavor="seurat", n_bins=int(n_bins))
    disp = tmp.var["dispersions_norm"].where(tmp.var["highly_variable"])
    return list(disp.sort_values(ascending=False).index[:n])


@dataclass
class ExpressionData:
    """Spots x (embedding, expression) with patient, sample and µm positions for one fit."""

    X: np.ndarray  # (N, D) float32 embeddings
    Y: np.ndarray  # (N, G) float64 log1p-normalised expression
    genes: list[str]
    patients: np.ndarray
    samples: np.ndarray
    xy_um: np.ndarray  # (N, 2) spot centres in µm (slide frame of each sample)
    embedding_key: str
    encoder: dict[str, Any] = field(default_factory=dict)
    tiling: dict[str, Any] = field(default_factory=dict)


def prepare(adata: Any, *, genes: Sequence[str] | None = None, n_top: int = 50,
            n_bins: int = 20) -> ExpressionData:
    """Targets, embeddings and groups of a concatenated AnnData (see ``read_samples``)."""
    key = adata.uns.get("embedding_key") or next((k for k in adata.obsm if k.startswith("X_")),
                                                 None)
    if key is None or key not in adata.obsm:
        raise SchemaError("the samples carry no obsm['X_<encoder>'] embedding; build them with "
                          "`pathstrat spatial build`")
    for col in ("patient_id", "sample_id"):
        if col not in adata.obs:
            raise SchemaError(f"obs has no '{col}' column; build the samples with "
                              "`pathstrat spatial build` (it records sample and patient)")
    sel = select_genes(adata, n_top, genes, n_bins)
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    y = log1p_normalise(counts)[:, [adata.var_names.get_loc(g) for g in sel]]
    mpp = np.asarray(adata.obs["slide_mpp"], float) if "slide_mpp" in adata.obs else \
        np.full(adata.n_obs, float(adata.uns.get("slide_mpp", 1.0)))
    xy = np.asarray(adata.obsm["spatial"], float) * mpp[:, None]
    return ExpressionData(X=np.asarray(adata.obsm[key], np.float32), Y=y, genes=sel,
                          patients=np.asarray(adata.obs["patient_id"]).astype(str),
                          samples=np.asarray(adata.obs["sample_id"]).astype(str), xy_um=xy,
                          embedding_key=key, encoder=dict(adata.uns.get("encoder", {})),
                          tiling=dict(adata.uns.get("tiling", {})))


# ---------------------------------------------------------------------------------------------
# smoothing


def smooth_features(x: np.ndarray, xy_um: np.ndarray, groups: np.ndarray,
                    sigma_um: float = DEFAULT_SMOOTH_UM) -> np.ndarray:
    """Gaussian-weighted mean of each row with rows of the same group within ``3 sigma`` µm."""
    from scipy.spatial import cKDTree

    out = np.empty_like(np.asarray(x, np.float64))
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        pts = xy_um[idx]
        tree = cKDTree(pts)
        pairs = tree.sparse_distance_matrix(tree, 3.0 * sigma_um, output_type="coo_matrix")
        from scipy import sparse

        w = sparse.coo_matrix((np.exp(-0.5 * (pairs.data / sigma_um) ** 2), (pairs.row, pairs.col)),
                              shape=(len(idx), len(idx))).tocsr()
        w.setdiag(1.0)  # each spot with weight 1 (zero-distance pairs may or may not be stored)
        w = sparse.diags(1.0 / np.asarray(w.sum(axis=1)).ravel()) @ w
        out[idx] = w @ np.asarray(x[idx], np.float64)
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# models: fit -> dict of arrays; predict from that dict


@dataclass(frozen=True)
class SpatialModel:
    """A registered expression model: ``fit(X, Y, seed, **hp) -> state``; ``smooth_um`` > 0
    smooths features over neighbouring spots first."""

    name: str
    fit: Callable[..., dict[str, np.ndarray]]
    smooth_um: float = 0.0
    description: str = ""


SPATIAL_MODELS: Registry[SpatialModel] = Registry("spatial model")


def _standardise_pca(x: np.ndarray, n_pcs: int, seed: int) -> dict[str, np.ndarray]:
    from sklearn.decomposition import PCA

    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    sd[sd < 1e-8] = 1.0
    z = (x - mu) / sd
    k = max(1, min(int(n_pcs), z.shape[0] - 1, z.shape[1]))
    pca = PCA(n_components=k, random_state=seed).fit(z)
    return {"x_mean": mu, "x_scale": sd, "pca_mean": pca.mean_, "pca_components": pca.components_}


def _project(state: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    z = (np.asarray(x, np.float64) - state["x_mean"]) / state["x_scale"]
    return (z - state["pca_mean"]) @ state["pca_components"].T


def fit_ridge(x: np.ndarray, y: np.ndarray, seed: int = 0, n_pcs: int = 256,
              alphas: Sequence[float] = tuple(np.logspace(-2, 4, 13))) -> dict[str, np.ndarray]:
    """Standardise -> PCA(``n_pcs``) -> ridge with alpha chosen by efficient LOO (RidgeCV)."""
    from sklearn.linear_model import RidgeCV

    st = _standardise_pca(np.asarray(x, np.float64), n_pcs, seed)
    r = RidgeCV(alphas=list(alphas)).fit(_project(st, x), y)
    return {**st, "kind": np.array("linear"), "coef": np.atleast_2d(r.coef_),
            "intercept": np.atleast_1d(r.intercept_), "alpha": np.float64(r.alpha_)}


def fit_mlp(x: np.ndarray, y: np.ndarray, seed: int = 0, n_pcs: int = 64, hidden: int = 128,
            l2: float = 1e-2, max_iter: int = 200) -> dict[str, np.ndarray]:
    """PCA -> MLP (one ReLU hidden layer, Adam, early stopping on 10 % of spots)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    st = _standardise_pca(np.asarray(x, np.float64), n_pcs, seed)
    p = _project(st, x)
    ym, ys = y.mean(axis=0), y.std(axis=0)
    ys[ys < 1e-8] = 1.0
    m = MLPRegressor(hidden_layer_sizes=(hidden,), alpha=l2, early_stopping=True,
                     max_iter=max_iter, random_state=seed, n_iter_no_change=10,
                     learning_rate_init=3e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m.fit(p, (y - ym) / ys)
    return {**st, "kind": np.array("mlp"), "w0": m.coefs_[0], "b0": m.intercepts_[0],
            "w1": m.coefs_[1], "b1": m.intercepts_[1], "y_mean": ym, "y_scale": ys}


def predict_state(state: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Predictions (N, G) of a fitted state on (already smoothed, if the model smooths) x."""
    p = _project(state, x)
    kind = str(state["kind"])
    if kind == "linear":
        return p @ state["coef"].T + state["intercept"]
    if kind == "mlp":
        h = np.maximum(p @ state["w0"] + state["b0"], 0.0)
        return (h @ state["w1"] + state["b1"]) * state["y_scale"] + state["y_mean"]
    raise SchemaError(f"unknown model state kind '{kind}'; refit with this pathstrat version")


SPATIAL_MODELS.add("ridge", SpatialModel("ridge", fit_ridge, 0.0,
                                         "standardise, PCA (256), ridge (alpha by LOO)"))
SPATIAL_MODELS.add("mlp", SpatialModel("mlp", fit_mlp, 0.0,
                                       "PCA (64), one hidden layer of 128, early stopping"))
SPATIAL_MODELS.add("ridge_smooth", SpatialModel(
    "ridge_smooth", fit_ridge, DEFAULT_SMOOTH_UM,
    f"ridge on embeddings Gaussian-averaged over neighbours (sigma {DEFAULT_SMOOTH_UM:g} µm)"))


# ---------------------------------------------------------------------------------------------
# programmes


def programme_scores(expr: np.ndarray, genes: Sequence[str], programmes: Mapping[str, Sequence[str]],
                     mean: np.ndarray, scale: np.ndarray) -> pd.DataFrame:
    """One score per programme: the mean z-score (``(expr - mean) / scale``) of its genes.

    Genes of a programme that are not among ``genes`` are skipped; a programme with none of
    its genes present is a :class:`ConfigError`.
    """
    idx = {g: i for i, g in enumerate(genes)}
    z = (np.asarray(expr, np.float64) - mean) / scale
    cols = {}
    for name, gs in programmes.items():
        cols_i = [idx[g] for g in gs if g in idx]
        if not cols_i:
            raise ConfigError(f"programme '{name}': none of its genes {list(gs)[:5]} is among the "
                              "model's genes; fit with `genes` including them")
        cols[name] = z[:, cols_i].mean(axis=1)
    return pd.DataFrame(cols)


def load_programmes(spec: str | os.PathLike | Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """Programmes from a mapping, a JSON file ``{name: [genes]}``, or ``"planted"`` (the
    generated data's programmes)."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return {str(k): [str(g) for g in v] for k, v in spec.items()}
    if str(spec) == "planted":
        from pathstrat.synthetic.spatial import programme_gene_sets

        return programme_gene_sets()
    p = Path(spec)
    if not p.is_file():
        raise ConfigError(f"programmes file '{p}' does not exist; give a JSON file "
                          "{\"name\": [\"GENE\", ...]} or 'planted'")
    try:
        obj = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"programmes file '{p}' is not JSON ({exc.msg} at line {exc.lineno}); "
                          "write {\"name\": [\"GENE\", ...]}") from exc
    if not isinstance(obj, dict) or not all(isinstance(v, list) for v in obj.values()):
        raise ConfigError(f"programmes file '{p}' must map names to gene lists")
    return load_programmes(obj)


# ---------------------------------------------------------------------------------------------
# cross-validation and metrics


def patient_folds(patients: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold index per row; all rows of a patient share one fold (shuffled patient order)."""
    uniq = np.unique(patients)
    if len(uniq) < 2:
        raise ConfigError(f"cross-validation needs at least 2 patients; the samples hold "
                          f"{len(uniq)}: add samples of other patients or set `folds` to 0")
    k = max(2, min(int(n_folds), len(uniq)))
    order = np.random.default_rng(seed).permutation(uniq)
    fold_of = {p: i % k for i, p in enumerate(order)}
    return np.array([fold_of[p] for p in patients])


def model_features(model: SpatialModel, data: ExpressionData) -> np.ndarray:
    """The model's input: embeddings, smoothed over neighbours of each sample if it smooths."""
    if model.smooth_um > 0:
        return smooth_features(data.X, data.xy_um, data.samples, model.smooth_um)
    return data.X


def cross_validate(data: ExpressionData, model: str = "ridge", n_folds: int = 5, seed: int = 0,
                   **hparams: Any) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions (N, G) with patient-level folds, and the fold of each row."""
    m = SPATIAL_MODELS.get(model)
    x = model_features(m, data)
    folds = patient_folds(data.patients, n_folds, seed)
    oof = np.zeros_like(data.Y)
    for k in np.unique(folds):
        tr, te = folds != k, folds == k
        st = m.fit(x[tr], data.Y[tr], seed=seed, **hparams)
        oof[te] = predict_state(st, x[te])
    return oof, folds


def _pearson_cols(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    den = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=0) / den, np.nan)


def _spearman_cols(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return _pearson_cols(rankdata(a, axis=0), rankdata(b, axis=0))


def gene_metrics(y: np.ndarray, pred: np.ndarray, genes: Sequence[str], patients: np.ndarray, *,
                 n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Per-gene Pearson and Spearman of predictions over all spots, with patient-bootstrap CIs."""
    from pathstrat.metrics import bootstrap_ci

    def fn(idx: np.ndarray) -> dict[str, float]:
        if len(idx) < 3:
            return {}
        pr = _pearson_cols(y[idx], pred[idx])
        sp = _spearman_cols(y[idx], pred[idx])
        return {**{f"pearson|{g}": float(v) for g, v in zip(genes, pr, strict=True)},
                **{f"spearman|{g}": float(v) for g, v in zip(genes, sp, strict=True)}}

    ci = bootstrap_ci(fn, len(y), groups=np.asarray(patients), n_boot=n_boot, seed=seed)
    rows = []
    for g in genes:
        row: dict[str, Any] = {"gene": g}
        for m in ("pearson", "spearman"):
            c = ci[f"{m}|{g}"]
            row.update({m: c["mean"], f"{m}_ci_low": c["ci_low"], f"{m}_ci_high": c["ci_high"]})
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# the fitted, saved model


@dataclass
class FittedExpressionModel:
    """A model fitted on all ST spots: predicts genes and programme scores from embeddings."""

    model: str
    state: dict[str, np.ndarray]
    genes: list[str]
    programmes: dict[str, list[str]]
    expr_mean: np.ndarray  # measured log1p expression stats of the training spots (z-scoring)
    expr_scale: np.ndarray
    levels: dict[str, float]  # programme "high" level: quantile of fitted training scores
    meta: dict[str, Any] = field(default_factory=dict)  # encoder, tiling, training samples

    @property
    def smooth_um(self) -> float:
        return float(self.meta.get("smooth_um", 0.0))

    def predict_genes(self, x: np.ndarray, xy_um: np.ndarray | None = None,
                      groups: np.ndarray | None = None) -> np.ndarray:
        """(N, G) predicted log1p expression; ``xy_um``/``groups`` needed when it smooths."""
        if self.smooth_um > 0:
            if xy_um is None:
                raise ConfigError(f"model '{self.model}' smooths over neighbours: pass positions")
            g = np.zeros(len(x), int) if groups is None else np.asarray(groups)
            x = smooth_features(x, xy_um, g, self.smooth_um)
        return predict_state(self.state, x)

    def predict_programmes(self, x: np.ndarray, xy_um: np.ndarray | None = None,
                           groups: np.ndarray | None = None) -> pd.DataFrame:
        """(N, programmes) scores of the predicted expression."""
        return programme_scores(self.predict_genes(x, xy_um, groups), self.genes,
                                self.programmes, self.expr_mean, self.expr_scale)

    def save(self, path: str | os.PathLike) -> Path:
        """One ``.npz`` (arrays + a JSON header), written atomically."""
        header = {"schema": MODEL_SCHEMA, "model": self.model, "genes": self.genes,
                  "programmes": self.programmes, "levels": self.levels, "meta": self.meta}
        arrays = {f"state__{k}": np.asarray(v) for k, v in self.state.items()}
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, header=np.array(json.dumps(header, default=str)),
                                    expr_mean=self.expr_mean, expr_scale=self.expr_scale, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FittedExpressionModel:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"spatial model '{p}' does not exist; fit one with "
                              "`pathstrat spatial fit`")
        with np.load(p, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            if header.get("schema") != MODEL_SCHEMA:
                raise SchemaError(f"'{p}' is not a pathstrat spatial model (schema "
                                  f"{header.get('schema')!r}); fit one with `pathstrat spatial fit`")
            state = {k[len("state__"):]: z[k] for k in z.files if k.startswith("state__")}
            return cls(model=header["model"], state=state, genes=list(header["genes"]),
                       programmes={k: list(v) for k, v in header["programmes"].items()},
                       expr_mean=z["expr_mean"], expr_scale=z["expr_scale"],
                       levels={k: float(v) for k, v in header["levels"].items()},
                       meta=header["meta"])


def fit_expression_model(data: ExpressionData, model: str = "ridge", *,
                         programmes: Mapping[str, Sequence[str]] | None = None, seed: int = 0,
                         level_quantile: float = DEFAULT_LEVEL_QUANTILE,
                         **hparams: Any) -> FittedExpressionModel:
    """Fit on all spots; programme levels are the ``level_quantile`` of the fitted scores."""
    m = SPATIAL_MODELS.get(model)
    x = model_features(m, data)
    st = m.fit(x, data.Y, seed=seed, **hparams)
    mean, scale = data.Y.mean(axis=0), data.Y.std(axis=0)
    scale[scale < 1e-8] = 1.0
    progs = {k: [g for g in v if g in data.genes] for k, v in (programmes or {}).items()}
    progs = {k: v for k, v in progs.items() if v}
    fitted = FittedExpressionModel(model=model, state=st, genes=list(data.genes),
                                   programmes=progs, expr_mean=mean, expr_scale=scale, levels={},
                                   meta={"smooth_um": m.smooth_um, "embedding_key": data.embedding_key,
                                         "encoder": data.encoder, "tiling": data.tiling,
                                         "n_spots": int(len(data.Y)),
                                         "samples": sorted(set(data.samples.tolist())),
                                         "patients": sorted(set(data.patients.tolist())),
                                         "level_quantile": level_quantile})
    if progs:
        sc = programme_scores(predict_state(st, x), fitted.genes, progs, mean, scale)
        fitted.levels = {k: float(np.quantile(sc[k], level_quantile)) for k in sc.columns}
    return fitted
