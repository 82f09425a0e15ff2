"""Several nodes on one PostgreSQL: who is alive (heartbeats) and which node delivers
which subscription (leases). ``leases``: the pure rules (fair share, when a node stops
trusting its leases); ``postgres``: the store ``cluster``; ``node``: one node's loop."""
