"""An OpenAI-compatible router: one URL in front of every way people run language models."""

from router.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
