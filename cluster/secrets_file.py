"""A job's secrets from a private file instead of its runtime environment.

Ray writes a job's runtime-env variables verbatim into the head's ``runtime_env_agent.log`` and returns them from
its Jobs API to every token holder. ``deploy/submit.sh --secrets-dir DIR`` therefore writes the secrets into a file
in DIR that only its owner can read and passes the job nothing but the file's path (``VIDEOP2R_SECRETS_FILE``).
The job's command reads it here, before anything else, into its own environment (where the config's ``*_env``
keys find them, and from where the driver hands them to its actors as constructor arguments, see
``actors.redaction.Secrets``), and deletes it: the secrets exist once, in the driver's memory.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from cluster.config_loader import ConfigError

ENV = "VIDEOP2R_SECRETS_FILE"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def load_secrets_file(environ=os.environ) -> list[str]:
    """Moves the secrets of the file ``environ[ENV]`` names into ``environ`` and deletes the file; returns their
    names (none when ``ENV`` is not set). A file that is a link, someone else's, or readable by anyone but its owner
    is refused: its contents could be another user's choice, or already seen."""
    path = environ.get(ENV)
    if not path:
        return []
    p = Path(path)
    try:
        st = p.lstat()
    except FileNotFoundError:
        raise ConfigError(
            f"{ENV}={path} does not exist: a secrets file is read once, so submit the job again "
            "(and give deploy/submit.sh a --secrets-dir the head node sees)"
        ) from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ConfigError(
            f"{ENV}={path} must be a regular file of this user (uid {os.getuid()}) that nobody else can read "
            "or write (mode 600): deploy/submit.sh --secrets-dir writes it so; the job must run as the submitter"
        )
    try:
        values = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{ENV}={path} is not a JSON object of variable names to values ({e})") from None
    if not isinstance(values, dict) or not all(
        isinstance(k, str) and _NAME.match(k) and isinstance(v, str) for k, v in values.items()
    ):
        raise ConfigError(f"{ENV}={path} is not a JSON object of variable names to string values")
    p.unlink()
    environ.update(values)
    del environ[ENV]
    return sorted(values)
