"""The work behind the operator commands of the CLI (``cli.py`` only wires them)."""
