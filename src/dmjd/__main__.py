"""``python -m dmjd`` runs the command-line interface."""

from dmjd.cli import console

raise SystemExit(console())
