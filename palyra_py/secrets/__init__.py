"""Secrets behind refs (`keyring:`, `env:`, `file:`) and the keyring fallback."""
