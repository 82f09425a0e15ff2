"""The admin API (`docs/admin-api.md`): handlers on the daemon's parts, over the Unix socket."""
