"""Signature schemes, one small pure class each."""
