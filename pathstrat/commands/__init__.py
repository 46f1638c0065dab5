"""CLI command modules, one per pipeline stage, and :func:`run_app`, the error handling of
the ``pathstrat`` entry point (:func:`pathstrat.cli.main`).

``run_app`` lives here, not in :mod:`pathstrat.cli`, so that a command running other commands
(``pathstrat demo --spatial``) can use it on the app it was registered on without importing
the CLI module that imports it (no import cycle)."""

from __future__ import annotations

from typing import Any

EXIT_USAGE = 2
#: Commands driven by a YAML config: setting names in errors become dotted config keys.
CONFIG_COMMANDS = {"run"}


def user_message(app: Any, exc: BaseException, argv: list[str]) -> str:
    """An error's message in the invoked command's words: `tile_px` becomes ``--tile-px`` for
    ``pathstrat tile`` and ``tiling.tile_px`` for ``pathstrat run`` (see :mod:`pathstrat.vocabulary`)."""
    import typer

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


def run_app(app: Any, argv: list[str] | None = None) -> int:
    """Run the typer ``app`` on ``argv``, turning pathstrat errors into one clear line and exit 2."""
    import sys

    import typer

    from pathstrat.errors import PathstratError

    try:
        rv = app(args=argv, standalone_mode=False)
    except PathstratError as exc:
        typer.echo(f"error: {user_message(app, exc, sys.argv[1:] if argv is None else argv)}", err=True)
        return EXIT_USAGE
    except SystemExit as exc:  # click usage errors in non-standalone mode
        return int(exc.code or 0) if isinstance(exc.code, int) else 1
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
    return rv if isinstance(rv, int) else 0
