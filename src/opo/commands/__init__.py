"""One module per CLI command; :mod:`opo.cli` parses the arguments and dispatches here."""
