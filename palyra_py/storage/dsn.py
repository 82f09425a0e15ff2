"""PostgreSQL connection URIs (``[storage] dsn``): what makes one usable, and the form that
may be shown (``daemon status``, logs, errors) with its password taken out.

Pure text handling, no driver: a DSN holds a password, so no message here ever repeats the
value it was given.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode, urlsplit

SCHEMES = ("postgresql", "postgres")
HIDDEN = "***"
_SECRET_PARAMS = frozenset({"password", "sslpassword", "passfile"})


def dsn_problem(dsn: str) -> str | None:
    """Why ``dsn`` is not a usable ``postgresql://`` URI, else ``None``. The reason never
    quotes the value."""
    if not dsn.strip():
        return "is empty"
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "is not a URI (expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
    if parts.scheme not in SCHEMES:
        return "must be a postgresql:// URI (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
    try:
        parts.port  # noqa: B018 (parses it)
    except ValueError:
        return "has a port that is not a number"
    if not parts.path.strip("/"):
        return "names no database (postgresql://USER@HOST/DATABASE)"
    return None


def redact_dsn(dsn: str) -> str:
    """``dsn`` with any password (in the user part or as a query parameter) shown as
    ``***``; an unreadable value is shown as ``***`` whole."""
    try:
        parts = urlsplit(dsn)
        if parts.scheme not in SCHEMES:
            return HIDDEN
        netloc = parts.netloc
        userinfo, at, hostport = netloc.rpartition("@")
        if at:
            user, colon, _password = userinfo.partition(":")
            netloc = f"{user}:{HIDDEN}@{hostport}" if colon else f"{user}@{hostport}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(key, HIDDEN if key.lower() in _SECRET_PARAMS else value)
                 for key, value in pairs],
                quote_via=quote, safe="/*",
            )
        # Written out rather than urlunsplit: that drops the "//" of an empty host.
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
    except ValueError:
        return HIDDEN
