"""The hub's HTTPS client for partner APIs: hardened session, authenticators, pagination, error mapping."""
