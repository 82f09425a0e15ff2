"""Inbound: the public ingress for providers' webhooks (verify, envelope, journal append), its
listener and its rejections.
"""
