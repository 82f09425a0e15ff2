"""The registry ``webhooks.toml``: integrations, subscriptions and tokens; their fields,
reading and editing.

Modules, each importing only the ones above it: ``positions`` (``RegistryError`` and where
it points), ``fields`` (the checks every record kind shares), ``edit`` (in-place edits of a
record in the tomlkit document), ``integrations``, ``subscriptions`` and ``tokens`` (one
record kind each: model, checks, parsing, edits), ``document`` (``Registry`` and
``parse_registry``: the three kinds read together) and ``file`` (``RegistryFile``: the file
on disk, read and edited under a lock).
"""
