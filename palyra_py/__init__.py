"""palyra-py: a self-hosted webhook gateway.

Receives signed webhooks, records them and every system event in a durable append-only
journal, and is controlled by the ``palyra`` CLI over a local Unix socket.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
