"""CLI command modules, one per pipeline stage, and :func:`run_app`, the error handling of
the ``pathstrat`` entry point (:func:`pathstrat.cli.main`).

``run_app`` lives here, not in :mod:`pathstrat.cli`, so that a command running other commands
(``pathstrat demo --spatial``) can use it on the app it was registered on without importing
the CLI module that imports it (no import cycle)."""

from __future__ import annotations

from typing import Any

EXIT_USAGE = 2


def run_app(app: Any, argv: list[str] | None = None) -> int:
    """Run the typer ``app`` on ``argv``, turning pathstrat errors into one clear line and exit 2."""
    import typer

    from pathstrat.errors import PathstratError

    try:
        rv = app(args=argv, standalone_mode=False)
    except PathstratError as exc:
        typer.echo(f"error: {exc}", err=True)
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
