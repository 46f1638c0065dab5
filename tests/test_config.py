"""Pipeline config: strict schema, close-key suggestions, --set overrides, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pathstrat.config import (
    STAGES,
    PipelineConfig,
    apply_override,
    dump_config,
    load_config,
    validate_config,
)
from pathstrat.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))

MINIMAL = {"out_dir": "run", "cohort": {"manifest": "m.csv"}, "train": {"targets": ["responder"]}}


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_shipped_configs_exist():
    names = {p.name for p in SHIPPED}
    assert {"demo.yaml", "example_cohort.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads_and_validates(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, PipelineConfig)
    assert cfg.out_dir.is_absolute() and cfg.cohort.manifest.is_absolute()
    # the YAML sets only keys the schema knows (extra="forbid" would have raised), and the
    # resolved dump round-trips through the schema unchanged
    again = validate_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_example_cohort_documents_every_key():
    """Each key of the schema appears in the example template (a documented study template)."""
    text = (ROOT / "configs" / "example_cohort.yaml").read_text()
    cfg = load_config(ROOT / "configs" / "example_cohort.yaml")
    assert cfg.embed.encoder_id == "uni2_h" and cfg.tiling.target_mpp == 0.5
    assert cfg.train.model == "abmil" and {"responder", "survival"} <= set(cfg.train.targets)
    assert cfg.stratify.arm_col and cfg.stratify.covariates and cfg.select is not None

    def keys(model, prefix=""):
        for name, field in model.model_fields.items():
            yield name
            sub = field.annotation
            for cand in (sub, *getattr(sub, "__args__", ())):
                if isinstance(cand, type) and hasattr(cand, "model_fields"):
                    yield from keys(cand, prefix + name + ".")

    missing = [k for k in set(keys(PipelineConfig)) if f"{k}:" not in text]
    assert not missing, f"example_cohort.yaml does not mention {sorted(missing)}"


def test_minimal_config_defaults(tmp_path: Path):
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert cfg.stages == list(STAGES)
    assert cfg.tiling.target_mpp == 0.5 and cfg.tiling.tile_px == 224
    assert cfg.out_dir == (tmp_path / "run").resolve()
    assert cfg.cohort.manifest == (tmp_path / "m.csv").resolve()


@pytest.mark.parametrize("data,needle", [
    ({**MINIMAL, "tilng": {}}, "Did you mean 'tiling'"),
    ({**MINIMAL, "tiling": {"target_mp": 0.5}}, "Did you mean 'tiling.target_mpp'"),
    ({**MINIMAL, "executor": {"slurm": {"partiton": "gpu"}}}, "Did you mean 'executor.slurm.partition'"),
    ({**MINIMAL, "train": {"targets": ["r"], "fold": 3}}, "Did you mean 'train.folds'"),
])
def test_unknown_key_suggests_closest(tmp_path: Path, data: dict, needle: str):
    with pytest.raises(ConfigError) as ei:
        load_config(_write(tmp_path, data))
    assert needle in str(ei.value)
    assert "unknown key" in str(ei.value)


def test_invalid_values_are_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="tiling.target_mpp"):
        load_config(_write(tmp_path, {**MINIMAL, "tiling": {"target_mpp": -1}}))
    with pytest.raises(ConfigError, match="Did you mean 'embed'"):
        load_config(_write(tmp_path, {**MINIMAL, "stages": ["tile", "embd"]}))
    with pytest.raises(ConfigError, match="max_array_tasks"):
        load_config(_write(tmp_path, {**MINIMAL, "executor": {"slurm": {"max_array_tasks": 5000}}}))
    with pytest.raises(ConfigError, match="select.target"):
        load_config(_write(tmp_path, {**MINIMAL, "select": {"target": "nope"}}))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    # the tiling stage's own rule (overlap < tile) fails when the config loads, naming the section
    with pytest.raises(ConfigError, match=r"tiling.*overlap_px \(64\) must be smaller than tile_px \(64\)"):
        load_config(_write(tmp_path, {**MINIMAL, "tiling": {"tile_px": 64, "overlap_px": 64}}))


def test_set_overrides_coerce_types(tmp_path: Path):
    p = _write(tmp_path, MINIMAL)
    cfg = load_config(p, ["train.folds=3", "tiling.target_mpp=0.25", "train.targets=[responder, survival]",
                          "stratify.arm_col=arm", "executor.kind=slurm", "embed.weights=null",
                          "executor.slurm.additional={constraint: a100}", "stratify.covariates=[age]"])
    assert cfg.train.folds == 3 and isinstance(cfg.train.folds, int)
    assert cfg.tiling.target_mpp == 0.25
    assert cfg.train.targets == ["responder", "survival"]
    assert cfg.stratify.arm_col == "arm" and cfg.stratify.covariates == ["age"]
    assert cfg.executor.kind == "slurm" and cfg.executor.slurm.additional == {"constraint": "a100"}
    assert cfg.embed.weights is None


def test_set_errors(tmp_path: Path):
    p = _write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match="Did you mean 'train.folds'"):
        load_config(p, ["train.fodls=3"])
    with pytest.raises(ConfigError, match="key.subkey=value"):
        load_config(p, ["train.folds"])
    with pytest.raises(ConfigError, match="train.folds"):
        load_config(p, ["train.folds=many"])
    with pytest.raises(ConfigError, match="executor.kind"):
        load_config(p, ["executor.kind=kubernetes"])


def test_apply_override_creates_sections():
    raw: dict = {}
    apply_override(raw, "executor.ray.num_gpus=1")
    assert raw == {"executor": {"ray": {"num_gpus": 1}}}


def test_unknown_encoder_and_train_values_fail_before_any_work(tmp_path: Path):
    with pytest.raises(ConfigError, match="Did you mean: uni2_h"):
        load_config(_write(tmp_path, {**MINIMAL, "embed": {"encoder_id": "uni2-h"}}))
    with pytest.raises(ConfigError, match="folds"):
        load_config(_write(tmp_path, MINIMAL), ["train.folds=0"])
    with pytest.raises(ConfigError, match="Did you mean 'train.patience'"):
        load_config(_write(tmp_path, MINIMAL), ["train.patiance=3"])


def test_config_schema_and_yaml_load_without_torch(tmp_path: Path):
    """`import pathstrat.config` and loading a YAML config never import torch (fast, GPU-free
    validation on a login node); the training schema comes from the torch-free
    pathstrat.training.config."""
    import subprocess
    import sys

    cfg = _write(tmp_path, {**MINIMAL, "train": {"targets": ["responder", "survival"], "folds": 3}})
    code = ("import sys\nimport pathstrat.config as c\nassert 'torch' not in sys.modules, 'on import'\n"
            f"cfg = c.load_config({str(cfg)!r})\nassert cfg.train.folds == 3\n"
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


@pytest.mark.parametrize("override,field,needle", [
    ("tiling.overlap_px=224", "tiling", "overlap_px (224) must be smaller than tile_px (224)"),
    ("tiling.tile_px=4", "tiling.tile_px", "greater than or equal to 8"),  # TilingParams' own bound
    ("embed.device=gpu", "embed.device", "device 'gpu'"),
    ("embed.dtype=fp8", "embed.dtype", "dtype 'fp8'"),
    ("embed.batch_size=0", "embed.batch_size", "greater than or equal to 1"),
    ("train.folds=0", "train.folds", "must be >= 1"),
    ("train.targets=[]", "train.targets", "at least one target is required (train.targets)"),
    ("train.model=abmli", "train.model", "Did you mean: abmil"),  # registry check before any work
    ("train.hparams={dimm: 8}", "train.hparams", "Unknown hyperparameter(s) ['dimm']"),
])
def test_invalid_stage_value_is_one_error_line_at_load(tmp_path: Path, capsys, override, field, needle):
    """A value the stage would reject fails `pathstrat run` when the config loads: exit 2, one
    `error:` line naming the field, and nothing run (no run directory)."""
    from pathstrat.cli import main

    data = {**MINIMAL, "out_dir": str(tmp_path / "run")}
    rc = main(["run", str(_write(tmp_path, data)), "--set", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    assert f": {field}: " in err[0] and needle in err[0]
    assert not (tmp_path / "run").exists()


def test_stage_sections_are_built_from_the_stage_parameter_classes():
    """Every key, default and bound of the stage's parameter class is in its config section."""
    from pathstrat.config import RUN_SPECIFIC_TRAIN_KEYS, EmbedConfig, TilingConfig, TrainConfig
    from pathstrat.encoders.embed import EmbedParams
    from pathstrat.tiling import TilingParams
    from pathstrat.training.config import TrainConfig as StageTrainConfig

    for section, params, run_keys in ((TilingConfig, TilingParams, ()), (EmbedConfig, EmbedParams, ()),
                                      (TrainConfig, StageTrainConfig, RUN_SPECIFIC_TRAIN_KEYS)):
        want = {k: (f.annotation, f.default, tuple(map(repr, f.metadata)))
                for k, f in params.model_fields.items() if k not in run_keys}
        got = {k: (f.annotation, f.default, tuple(map(repr, f.metadata)))
               for k, f in section.model_fields.items() if k in want}
        assert got == want
    assert set(TilingConfig.model_fields) - set(TilingParams.model_fields) == {"workers"}
