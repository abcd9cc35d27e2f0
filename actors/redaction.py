"""One redaction of secrets in URLs, for every log line, error message and written config (pure).

A URL's password (``redis://user:pw@host``; the userinfo ends at the authority's last ``@``, so a raw ``@`` in the
password does not leak its tail) and the values of secret-looking query parameters (``?password=...``, which
redis-py honours) become ``***``.
"""

from __future__ import annotations

import re

# scheme://[user]:password@ up to the authority's last "@" (the authority ends at the first "/", "?" or "#" after it)
_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://[^:/?#@\s]*):[^\s/?#]*@(?=[^@\s/?#]*(?:[/?#\s]|$))", re.IGNORECASE)
_QUERY = re.compile(r"([?&](?:password|passwd|pass|pwd|secret|token|api_key|apikey|key|auth)=)[^&#\s]*", re.IGNORECASE)


def redact_url(text: str) -> str:
    """``text`` (a URL, or a line holding URLs) with passwords and secret query values replaced by ``***``."""
    return _QUERY.sub(r"\1***", _USERINFO.sub(r"\1:***@", text))


class Secrets(dict):
    """Environment variables holding secrets (name -> value), handed to an actor as a constructor argument, which
    sets them in its own process. Not a runtime env: Ray writes runtime-env variables verbatim into every node's
    ``runtime_env_agent.log`` (readable by any local user) and returns them from its State API; an actor's
    arguments it does not log. Printed, it shows the names only."""

    def __repr__(self) -> str:
        return f"Secrets({', '.join(sorted(self))}; values hidden)"

    __str__ = __repr__
