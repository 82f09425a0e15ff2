"""The registry ``webhooks.toml``: integrations, subscriptions and tokens; their fields,
reading and editing.

Modules, each importing only the ones above it: ``positions`` (``RegistryError`` and where
it points), ``fields`` (the checks every record kind shares), ``edit`` (in-place edits of a
record in the tomlkit document), ``integrations``, ``subscriptions`` and ``tokens`` (one
record kind each: model, checks, parsing, edits), ``document`` (``Registry`` and
``parse_registry``: the three kinds read together), ``apply`` (an edit, an import's check
and its changes, as text to text), ``file`` (``RegistryFile``: the file on disk, read and
edited under a lock), ``source`` (``RegistrySource``: where the registry is kept, the file
or the database), ``engines`` (``DbRegistry``: the versioned document in a database, with
optimistic edits) and ``postgres`` (its SQL, asyncpg).
"""
