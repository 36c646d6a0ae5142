"""``${VAR}`` and ``${VAR:-default}`` in config strings, from the environment."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

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


# -- environment variables that set config keys (seed 002's names) ---------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _origins(value: str) -> list[str]:
    return [origin.strip() for origin in value.split(",") if origin.strip()]


def _globs(value: str) -> list[str]:
    globs = [glob.strip() for glob in value.split(",") if glob.strip()]
    if not globs:
        raise ValueError("must name at least one model or glob (comma-separated), got an empty value")
    return globs


def _int(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(f"must be a whole number, got {value!r}") from None


def _float(value: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise ValueError(f"must be a number, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"must be a finite number, got {value!r}")
    return number


#: Environment variable -> (config key path, how its text becomes the value). The
#: environment wins over the file; ``overrides_from_env`` says which were applied.
ENV_KEYS: dict[str, tuple[str, Callable[[str], object]]] = {
    "LOG_FORMAT": ("server.log_format", str.strip),
    "SERVICE_NAME": ("server.service_name", str.strip),
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("server.otlp_endpoint", str.strip),
    "CORS_ALLOWED_ORIGINS": ("server.cors_origins", _origins),
    "LLM_INFERENCE_HOSTNAME": ("server.host", str.strip),
    "LLM_INFERENCE_PORT": ("server.port", _int),
    "LLM_MAX_CONCURRENT_REQUESTS": ("server.max_concurrent", _int),
    "LLM_ALLOWED_MODELS": ("generation.allowed_models", _globs),
    "LLM_DEFAULT_TEMPERATURE": ("generation.defaults.temperature", _float),
    "LLM_DEFAULT_TOP_P": ("generation.defaults.top_p", _float),
    "LLM_DEFAULT_MAX_TOKENS": ("generation.defaults.max_tokens", _int),
    "LLM_MAX_TOKENS_LIMIT": ("generation.max_tokens_limit", _int),
}

#: Read by the Hugging Face downloads themselves (huggingface_hub, in the router and the
#: download processes it starts, which inherit the environment); ``router check`` lists them.
PASSED_ENV = ("HF_HOME", "HF_ENDPOINT")

#: ``SERVER_SSL_ENABLED=true`` turns on ``server.tls`` with these two paths.
TLS_ENV = ("SERVER_SSL_ENABLED", "TLS_SERVER_CERT_PATH", "TLS_SERVER_KEY_PATH")


def overrides_from_env(environ: Mapping[str, str], bad: Callable[[str, str], Exception]) -> dict[str, object]:
    """Config key path -> value, for each variable of ``ENV_KEYS`` that is set (and
    ``server.tls`` from ``TLS_ENV``). ``bad(variable, message)`` is raised for a value
    that cannot be one (the caller checks bounds and choices like the file's)."""
    out: dict[str, object] = {}
    for var, (key, parse) in ENV_KEYS.items():
        if var in environ:
            try:
                out[key] = parse(environ[var])
            except ValueError as exc:
                raise bad(var, f"{exc} (it sets {key})") from exc
    enabled_var, cert_var, key_var = TLS_ENV
    if enabled_var in environ:
        flag = environ[enabled_var].strip().lower()
        if flag not in _TRUE | _FALSE:
            raise bad(enabled_var, f"must be true or false, got {environ[enabled_var]!r}")
        if flag in _TRUE:
            missing = [v for v in (cert_var, key_var) if not environ.get(v)]
            if missing:
                raise bad(missing[0], f"must be set (a PEM file) when {enabled_var} is true")
            out["server.tls"] = {"cert": environ[cert_var], "key": environ[key_var]}
        else:
            out["server.tls"] = None
    return out
