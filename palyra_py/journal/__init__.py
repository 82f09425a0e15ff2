"""The journal, the spine: append-only events with a gap-free seq and a SHA-256 chain; its
rules and its engines.
"""
