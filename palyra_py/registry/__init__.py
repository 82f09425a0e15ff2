"""The registry `webhooks.toml`: integrations, subscriptions and tokens; their fields, reading
and editing.
"""
