"""The ``gptq`` provider plugin: local Hugging Face causal-LM folders (4-bit GPTQ, or plain
fp16/bf16/fp32) served through transformers in worker processes, with continuous
batching, and the ``quantize`` command that makes a GPTQ folder from a full-precision one.

Importing this package imports no engine code: torch, transformers, optimum and
gptqmodel are loaded only inside the worker processes (``plugins.gptq.engine``) and by
``quantize`` (``plugins.gptq.quantize``). The machinery (processes, pool, worker server,
scheduler) is the toolkit's, ``router.workers``; what is GPTQ's is the knobs
(``settings``), the provider's config (``provider``), the engine and the command.
"""

from __future__ import annotations

from collections.abc import Callable

from plugins.gptq.quantize import COMMAND as QUANTIZE
from plugins.gptq.worker import COMMAND
from router import Command, Provider, hookimpl


@hookimpl
def register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    from plugins.gptq.provider import GPTQProvider

    register("gptq", GPTQProvider)


@hookimpl
def register_workers(register: Callable[[Command], None]) -> None:
    register(COMMAND)


@hookimpl
def register_commands(register: Callable[[Command], None]) -> None:
    register(QUANTIZE)
