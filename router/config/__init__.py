"""Configuration: ``schema`` (the typed sections), ``loader`` (YAML to schema, errors with
file, key and line), ``env`` (``${VAR}`` substitution)."""
