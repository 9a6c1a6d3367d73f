"""Transports: where partner files come from and where deliveries go (local folder now; SFTP next)."""
