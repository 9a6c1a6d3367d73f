"""Partner API clients (France Travail, i-milo), each built from a named connection (connectors/connections.py)."""
