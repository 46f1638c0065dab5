"""``python -m pathstrat`` runs the CLI (same as the ``pathstrat`` script)."""

from pathstrat.cli import main

raise SystemExit(main())
