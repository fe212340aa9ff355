"""``python -m samserve_client``: the ``samserve`` command (client commands, else the server's)."""

from samserve_client.cli import main

main()
