"""``python -m batchnlp`` runs the CLI."""

from batchnlp.cli import main

main()
