"""The local-worker toolkit: what an engine plugin needs to run models in worker processes.

A worker is a process serving one model over the OpenAI API on a loopback port, so a
crash in native code never takes the router down and stopping it returns all its memory.

Router side:
    ``Launch`` (how to start one)  ->  ``ManagedProcess`` (supervision: ready, crashed,
    stopped)  ->  ``ModelPool`` (leases, idle TTL, limits, ``plan_eviction``)  ->
    ``WorkerClient`` (posting, lease-tracked ``LeasedResponse``).
Worker side:
    an ``Engine`` (load, chat, complete, embed, ``Extension``s)  served by
    ``run_worker`` / ``WorkerServer`` with a ``SingleSlotScheduler``, a
    ``BatchScheduler`` or a ``ContinuousScheduler`` (jobs join and leave an engine's
    running loop through an ``Inbox``); ``Job`` bridges the engine's thread and the loop.
Between them: the stderr protocol lines (``listening_line``, ``load_failed_line``).
Settings dataclasses become worker flags and back with ``add_flags``/``from_flags``/
``to_flags``. Nothing here names an engine; the built-in engine plugins are built on it.
"""

from router.workers.bridge import STREAMING, Job, Operation, Result
from router.workers.client import LeasedResponse, WorkerClient
from router.workers.engine import Engine, Extension, split_prefill
from router.workers.eviction import CannotFit, Limits, Loaded, Plan, plan_eviction
from router.workers.launch import Launch, add_flags, free_port, from_flags, to_flags
from router.workers.pool import Lease, Member, ModelPool
from router.workers.process import ManagedProcess, State, describe_exit
from router.workers.provider import LocalModel, WorkerProvider
from router.workers.protocol import (
    Listening,
    LoadFailed,
    listening_line,
    load_failed_line,
    parse_line,
    serving_line,
)
from router.workers.scheduling import (
    BatchScheduler,
    ContinuousScheduler,
    EngineThread,
    Inbox,
    SingleSlotScheduler,
)
from router.workers.server import LOAD_FAILED_STATUS, WorkerServer, run_worker, serve

__all__ = [
    # starting and supervising
    "Launch", "free_port", "ManagedProcess", "State", "describe_exit",
    # settings as flags
    "add_flags", "from_flags", "to_flags",
    # the pool
    "ModelPool", "Lease", "Member", "plan_eviction", "Loaded", "Limits", "Plan", "CannotFit",
    # talking to a worker, and the provider built on all of it
    "WorkerClient", "LeasedResponse", "WorkerProvider", "LocalModel",
    # the worker side
    "Engine", "Extension", "split_prefill", "Job", "Operation", "Result", "STREAMING",
    "WorkerServer", "serve", "run_worker", "LOAD_FAILED_STATUS",
    "SingleSlotScheduler", "BatchScheduler", "ContinuousScheduler", "Inbox", "EngineThread",
    # the stderr protocol
    "listening_line", "serving_line", "load_failed_line", "parse_line", "Listening", "LoadFailed",
]
