"""CLI subcommands contributed by plugins (``register_commands``) and the standalone
workers of local engines (``register_workers``, run as ``router worker --provider NAME``)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: ``add_arguments`` declares its flags, ``run`` returns the exit status."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
