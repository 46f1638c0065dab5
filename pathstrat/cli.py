"""`pathstrat <command>`: a thin typer front end.

Each pipeline stage registers its commands from ``pathstrat/commands/<stage>.py`` (a
``register(app)`` function). Command modules import only typer and the standard library at
module level; heavy libraries (torch, openslide, lifelines) are imported inside the command
bodies so that ``pathstrat --help`` answers instantly.

Exit status: 0 success, 1 unexpected error, 2 usage or input error, 3 finished but some
slides failed (listed in ``failures.csv``).
"""

from __future__ import annotations

import logging
import sys

import typer

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3

app = typer.Typer(
    name="pathstrat",
    help="Digital-pathology patient stratification: slides -> tiles -> embeddings -> MIL -> "
    "survival, trial selection, heatmaps and an HTML report.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from pathstrat import __version__

        typer.echo(f"pathstrat {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-vv for debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
) -> None:
    """Configure logging once for every command."""
    from pathstrat.logs import setup_logging

    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    setup_logging(level)


# One module per stage, imported explicitly; order is the order in `pathstrat --help`.
from pathstrat.commands import (  # noqa: E402 - after the app and logging set-up they use
    decisions,  # stratify, select, heatmap, report
    embedding,  # embed, encoders
    federated,  # federated ...
    pipeline,  # run, demo, doctor, init
    sharing,  # package, finetune, serve
    slides,  # info
    spatial,  # spatial synth|build|fit|predict|pseudobulk
    tiling,  # tile
    training,  # train, predict
    trial,  # trial-design
)

COMMAND_MODULES = (slides, tiling, embedding, training, decisions, pipeline, federated, trial, sharing,
                   spatial)
for _mod in COMMAND_MODULES:
    _mod.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning pathstrat errors into one clear line and exit 2
    (:func:`pathstrat.commands.run_app`)."""
    from pathstrat.commands import run_app

    return run_app(app, argv)


if __name__ == "__main__":
    sys.exit(main())
