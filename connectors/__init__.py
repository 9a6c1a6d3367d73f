"""Partner connectors: a transport (where files are) and a format (how records are read), kept apart."""
