"""Plumbing shared by the stores' files: SQLite connections and writer threads, atomic private
files. No store logic.
"""
