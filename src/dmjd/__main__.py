"""``python -m dmjd`` runs the command-line interface."""

from dmjd.cli import main

raise SystemExit(main())
