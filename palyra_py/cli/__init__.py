"""The ``palyra`` command line: a thin client of the daemon's admin API."""
