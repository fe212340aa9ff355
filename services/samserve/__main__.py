"""``python -m samserve`` == the ``samserve`` command."""

from samserve.cli import main

main()
