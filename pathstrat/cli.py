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


#: Commands driven by a YAML config: setting names in errors become dotted config keys.
CONFIG_COMMANDS = {"run"}


def user_message(exc: BaseException, argv: list[str]) -> str:
    """An error's message in the invoked command's words: `tile_px` becomes ``--tile-px`` for
    ``pathstrat tile`` and ``tiling.tile_px`` for ``pathstrat run`` (see :mod:`pathstrat.vocabulary`)."""
    from pathstrat import vocabulary

    msg = str(exc)
    if not vocabulary.FIELD_REF.search(msg):
        return msg
    try:
        cmd = vocabulary.leaf_command(typer.main.get_command(app), argv)
        names = vocabulary.command_flags(cmd)
        if getattr(cmd, "name", None) in CONFIG_COMMANDS:
            from pathstrat.config import PipelineConfig

            names = {**vocabulary.config_keys(PipelineConfig), **names}
    except Exception:  # noqa: BLE001 - a message must never fail to print
        return msg
    return vocabulary.translate(msg, names)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning pathstrat errors into one clear line and exit 2."""
    from pathstrat.errors import PathstratError

    try:
        rv = app(args=argv, standalone_mode=False)
    except PathstratError as exc:
        typer.echo(f"error: {user_message(exc, sys.argv[1:] if argv is None else argv)}", err=True)
        return EXIT_USAGE
    except SystemExit as exc:  # click usage errors in non-standalone mode
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_ERROR
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - last-resort: one line, not a traceback wall
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            return 130
        raise
    return rv if isinstance(rv, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
