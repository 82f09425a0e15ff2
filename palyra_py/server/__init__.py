"""Composition: the daemon that builds every part, its listeners and its limits."""
