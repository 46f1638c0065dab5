"""The CLI front end: `pathstrat --help` stays instant because heavy libraries load lazily."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("numpy", "pandas", "torch", "timm", "h5py", "openslide", "lifelines", "matplotlib",
         "sklearn", "scipy", "cv2", "flwr", "ray", "pydantic", "yaml", "tifffile")


def test_help_imports_no_heavy_library():
    """Every command module is registered by `--help`; none may import a heavy library."""
    code = ("import sys\nfrom pathstrat.cli import main\nrc = main(['--help'])\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\nprint('rc', rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "rc 0"
    assert lines[-2] == "[]", f"heavy modules imported by `pathstrat --help`: {lines[-2]}"
    for cmd in ("info", "tile", "embed", "encoders", "stratify", "select", "heatmap", "report",
                "federated"):
        assert cmd in proc.stdout


def test_every_command_that_replaces_outputs_takes_overwrite():
    """One flag name for "replace what is there": --overwrite (old --force kept as an alias)."""
    from typer.testing import CliRunner

    from pathstrat.cli import app

    for cmd in (["tile"], ["embed"], ["train"], ["run"], ["init"]):
        res = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0 and "--overwrite" in res.output, cmd
    # -j / --workers: the number of worker processes, wherever a command has them
    for cmd in (["tile"], ["embed"]):
        out = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"}).output
        assert "--workers" in out and "-j" in out, cmd
