"""Library messages name config fields; the CLI and config front ends translate them."""

from __future__ import annotations

import pandas as pd
import pytest
import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pathstrat import vocabulary
from pathstrat.cli import app, main
from pathstrat.commands import user_message
from pathstrat.errors import ConfigError
from pathstrat.training.splits import make_splits


def test_translate_rewrites_known_fields_only():
    names = {"tile_px": "--tile-px", "mpp": "--mpp"}
    msg = "use a larger `tile_px`, fix the manifest column 'mpp' or pass `mpp`; `other` stays"
    assert vocabulary.translate(msg, names) == (
        "use a larger --tile-px, fix the manifest column 'mpp' or pass --mpp; `other` stays")


def test_failures_csv_reasons_name_fields_plainly(tmp_path):
    """failures.csv is read by people and other tools (no front end translates it): a recorded
    reason with `tile_px` in backticks lands as plain tile_px; commands stay quoted."""
    import csv

    from pathstrat.io import FailureLog

    assert vocabulary.plain("use a larger `tile_px` or `target_mpp`") == \
        "use a larger tile_px or target_mpp"
    log = FailureLog(tmp_path / "failures.csv", "tile")
    log.record("s1", "s1.svs", "ConfigError", "tiles too small: use a larger `tile_px`")
    log.add("s2", "s2.svs", ConfigError("no tiles file; run `pathstrat tile` or lower `min_tissue`"))
    with open(log.write(), newline="", encoding="utf-8") as fh:
        rows = {r["slide_id"]: r for r in csv.DictReader(fh)}
    assert rows["s1"]["reason"] == "tiles too small: use a larger tile_px"
    assert rows["s2"]["reason"] == "no tiles file; run `pathstrat tile` or lower min_tissue"
    assert rows["s2"]["error_type"] == "ConfigError"


def test_command_flags_and_leaf_command():
    root = typer.main.get_command(app)
    tile = vocabulary.leaf_command(root, ["-v", "tile", "--manifest", "m.csv"])
    assert tile.name == "tile"
    flags = vocabulary.command_flags(tile)
    assert flags["tile_px"] == "--tile-px" and flags["overlap_px"] == "--overlap-px"
    train = vocabulary.leaf_command(root, ["train"])
    assert vocabulary.command_flags(train)["targets"] == "--target"  # repeatable flag, plural field
    sim = vocabulary.leaf_command(root, ["federated", "simulate", "-c", "x.yaml"])
    assert sim.name == "simulate"


def test_config_keys_are_dotted_and_unambiguous():
    from pathstrat.config import PipelineConfig

    keys = vocabulary.config_keys(PipelineConfig)
    assert keys["tile_px"] == "tiling.tile_px" and keys["overlap_px"] == "tiling.overlap_px"
    assert "seed" not in keys  # in several sections: left bare


def test_user_message_per_front_end():
    exc = ConfigError("overlap must be below the tile: lower `overlap_px` or raise `tile_px`.")
    assert user_message(app, exc, ["tile", "--manifest", "m.csv"]) == (
        "overlap must be below the tile: lower --overlap-px or raise --tile-px.")
    assert user_message(app, exc, ["run", "study.yaml"]) == (
        "overlap must be below the tile: lower tiling.overlap_px or raise tiling.tile_px.")
    assert user_message(app, exc, ["report", "run"]) == str(exc)  # no such flags: unchanged


def test_api_and_cli_name_the_setting_as_their_user_typed_it(tmp_path, capsys):
    pat = pd.DataFrame({"patient_id": [f"p{i}" for i in range(6)], "y": [0, 1] * 3})
    with pytest.raises(ConfigError, match=r"`folds` must be at least 2 \(got 1\)"):
        make_splits(pat, folds=1, seed=0)
    bad = tmp_path / "selection.json"
    bad.write_text("{not json")
    rc = main(["trial-design", "--selection", str(bad), "--hr-positive", "0.6", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --selection selection.json: cannot read JSON")


class _Demo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tile_px: int = Field(224, gt=0)


def test_one_validation_formatter_names_key_value_and_close_match():
    with pytest.raises(ValidationError) as ei:
        _Demo.model_validate({"tile_px": -3})
    line = vocabulary.format_validation_error(ei.value, "tiling", _Demo)
    assert line.startswith("tiling: tile_px: ") and "(got -3)" in line and "\n" not in line
    with pytest.raises(ValidationError) as ei:
        _Demo.model_validate({"tile_pz": 3})
    line = vocabulary.format_validation_error(ei.value, "tiling", _Demo)
    assert "unknown key 'tile_pz'" in line and "Did you mean 'tile_px'?" in line
