"""``${VAR}`` and ``${VAR:-default}`` in config strings, from the environment."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute(text: str, missing: Callable[[str], Exception]) -> str:
    """``text`` with every ``${VAR}`` replaced; ``missing(name)`` is raised for an unset
    variable without a default."""
    if "${" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise missing(name)

    return _ENV_VAR.sub(replace, text)
