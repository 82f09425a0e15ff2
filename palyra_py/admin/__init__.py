"""The admin API (`docs/admin-api.md`): handlers over the Unix socket, each on a typed
context of the parts it uses (:mod:`palyra_py.admin.context`), never on the daemon."""
