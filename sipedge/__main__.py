"""``python -m sipedge`` runs the command line."""

from sipedge.cli import main

raise SystemExit(main())
