"""Clients of the daemon's admin API over its Unix socket, for the CLI."""
