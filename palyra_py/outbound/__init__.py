"""Outbound: subscriptions' deliveries read from the journal, their filters, formats, retries,
signing and the SSRF guard.
"""
