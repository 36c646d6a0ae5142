"""The transformers side of a worker: load one Hugging Face causal-LM folder (GPTQ or full
precision) and decode requests together, with continuous batching.

Imported only inside worker processes (torch and transformers are never imported by the
router). Everything here runs on the worker's engine thread, in ``run_continuous``: between
two decode steps it takes the requests admitted since (each is prefilled alone, exactly as
``model.generate`` would, and its first token sampled), then one forward pass decodes one
token for every request in the batch. Requests of different lengths share one KV cache,
left-padded, with an attention mask and each request's own position ids, so a request's
greedy answer is the one it gets alone (``generate(do_sample=False)``). A request leaves
the batch when it ends (its stop, its length, or its client gone: checked before every
step, so a disconnect stops it within a token); the padding no row needs any more is cut.

A model whose cache is not a plain one (sliding windows, say) or whose forward takes no
position ids is still served several at a time, each request with its own cache, stepped
one after another (``batching: separate`` in ``/health``).
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import inspect
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.cache_utils import DynamicLayer

from plugins.gptq.settings import Folder, WorkerSettings, check_device, inspect_folder
from plugins.gptq.text import (
    FALLBACK_STOPS,
    Detokenizer,
    StopMatcher,
    fallback_prompt,
    normalize_messages,
    stop_list,
)
from router import ContextLengthExceeded, EngineError, InvalidRequest, ModelLoadFailed
from router.workers import Engine, Inbox, Job, split_prefill

log = logging.getLogger("router.gptq")

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclasses.dataclass
class Sampling:
    """One request's sampling parameters."""

    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = dataclasses.field(default_factory=dict)
    min_tokens: int = 0
    ignore_eos: bool = False
    seed: int | None = None


class _Row:
    """One request in the batch."""

    def __init__(self, job: Job, engine: TransformersEngine, prompt: list[int], max_new: int,
                 sampling: Sampling, stops: list[str]) -> None:
        self.job = job
        self.chat = job.kind == "chat/completions"
        self.stream = bool(job.payload.get("stream"))
        options = job.payload.get("stream_options")
        self.include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        self.prompt = prompt
        self.max_new = max_new
        self.sampling = sampling
        self.generated: list[int] = []
        self.counts: collections.Counter[int] = collections.Counter()
        self.seen = set(prompt)
        self.detok = Detokenizer(engine.decode)
        self.stops = StopMatcher(stops)
        self.text: list[str] = []
        self.finish: str | None = None
        self.position = len(prompt)  # the position of the next token fed to the model
        self.last = -1
        self.cache: Any = None  # its own cache (separate batching only)
        self.generator: torch.Generator | None = None
        if sampling.seed is not None:
            self.generator = torch.Generator(device=engine.device)
            self.generator.manual_seed(sampling.seed)
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.model = engine.model_id


class TransformersEngine(Engine):
    """One Hugging Face causal LM, up to ``max_batch`` requests decoded together."""

    owned_by = "gptq"
    label = "transformers"
    continuous = True

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.knobs = settings.knobs
        self.max_batch = settings.knobs.max_batch
        self.model: Any = None
        self.tokenizer: Any = None
        self.folder: Folder | None = None
        self.device = "cpu"
        self.dtype: torch.dtype = torch.float32
        self.context_length = 0
        self.eos: set[int] = set()
        self.template = "none"
        self.defaults = Sampling()
        self.load_s = 0.0
        self.batchable = True
        self.takes_positions = True
        # The batch: rows, their shared cache and attention mask (padded batching).
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.counters = {"decode_steps": 0, "batched_steps": 0, "tokens_generated": 0,
                         "prefills": 0, "peak_batch": 0}

    # -- loading ---------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.settings.served_id

    def card(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.settings.model}
        if self.model is not None:
            out.update(device=self.device, context_length=self.context_length)
        return out

    def info(self) -> dict[str, Any]:
        q = self.folder.quantization if self.folder else None
        return {
            "device": self.device, "dtype": str(self.dtype).removeprefix("torch."),
            "context_length": self.context_length, "max_batch": self.max_batch,
            "batching": "padded" if self.batchable else "separate",
            "quantization": ({k: q.get(k) for k in ("quant_method", "bits", "group_size") if k in q} if q else None),
            "chat_template": self.template, "load_s": round(self.load_s, 3),
            "engine": dict(self.counters),
        }

    def load(self) -> None:
        knobs = self.knobs
        check_device(knobs.device)
        folder = self.folder = inspect_folder(self.settings.model, f"model {self.model_id!r}")
        torch.set_num_threads(knobs.threads)
        self.device = self._device(knobs.device)
        quantized = folder.quantization is not None
        if quantized and (importlib.util.find_spec("gptqmodel") is None or importlib.util.find_spec("optimum") is None):
            raise ModelLoadFailed(f"model {self.model_id!r}: {folder.path} is a {folder.describe()}; loading it "
                                  "needs gptqmodel and optimum: pip install '.[gptq]'", code="gptq_backend_missing")
        self.dtype = self._dtype(folder)
        needed, free = self._memory(folder)
        if free is not None and needed > free:
            raise self._out_of_memory(needed, free)
        started = time.monotonic()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder.path), local_files_only=True,
                                                           trust_remote_code=knobs.trust_remote_code)
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds
            raise ModelLoadFailed(f"model {self.model_id!r}: no usable tokenizer in {folder.path}: {exc} "
                                  "(the folder needs tokenizer.json or the tokenizer's own files)",
                                  code="tokenizer_missing") from exc
        try:
            self.model = AutoModelForCausalLM.from_pretrained(
                str(folder.path), dtype=self.dtype, device_map=self.device, local_files_only=True,
                trust_remote_code=knobs.trust_remote_code)
        except (torch.OutOfMemoryError, MemoryError) as exc:
            raise self._out_of_memory(needed, free) from exc
        except Exception as exc:  # noqa: BLE001
            raise self._load_failure(folder, exc) from exc
        self.model.eval()
        self.load_s = time.monotonic() - started
        self._learn_model(folder)
        log.info("loaded %s (%s) on %s as %s in %.2fs", folder.path, folder.describe(), self.device,
                 self.dtype, self.load_s)

    def _device(self, wanted: str) -> str:
        available = torch.cuda.is_available()
        if wanted == "auto":
            return "cuda:0" if available else "cpu"
        if wanted == "cpu":
            return "cpu"
        build = f"torch {torch.__version__}, " + (f"built for CUDA {torch.version.cuda}" if torch.version.cuda
                                                  else "a CPU-only build")
        if not available:
            raise ModelLoadFailed(f"model {self.model_id!r}: device {wanted!r} was asked for, but torch sees no "
                                  f"CUDA GPU ({build}); use device: cpu (or auto), or install a CUDA build "
                                  "of torch on a machine with an NVIDIA GPU", code="cuda_unavailable")
        index = int(wanted.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise ModelLoadFailed(f"model {self.model_id!r}: device {wanted!r} was asked for, but torch sees "
                                  f"{count} GPU(s) (cuda:0..cuda:{count - 1})", code="cuda_unavailable")
        return f"cuda:{index}"

    def _dtype(self, folder: Folder) -> torch.dtype:
        wanted = self.knobs.dtype
        if wanted != "auto":
            return _DTYPES[wanted]
        if self.device == "cpu":
            return torch.float32  # half-precision matmuls are slow (or missing) on most CPUs
        stored = str(folder.config.get("torch_dtype") or folder.config.get("dtype") or "float16")
        if folder.quantization is not None:
            return torch.float16 if stored != "bfloat16" else torch.bfloat16
        return _DTYPES.get(stored, torch.float16)

    def _memory(self, folder: Folder) -> tuple[int, int | None]:
        """The model's estimated size in memory (its weights as loaded) and the memory free
        on the device (None: unknown)."""
        stored = str(folder.config.get("torch_dtype") or folder.config.get("dtype") or "float32")
        width = {"float32": 4, "float16": 2, "bfloat16": 2}.get(stored, 4)
        size = folder.size_bytes
        if folder.quantization is None:
            size = size * _bytes(self.dtype) // width
        needed = int(size * 1.1)  # plus buffers and a first KV cache
        if self.device.startswith("cuda"):
            free, _ = torch.cuda.mem_get_info(torch.device(self.device))
            return needed, int(free)
        return needed, _available_ram()

    def _out_of_memory(self, needed: int, free: int | None) -> ModelLoadFailed:
        have = f"{free / 2**30:.2f} GiB" if free is not None else "an unknown amount"
        where = "GPU memory" if self.device.startswith("cuda") else "RAM"
        return ModelLoadFailed(
            f"model {self.model_id!r} does not fit: it needs about {needed / 2**30:.2f} GiB "
            f"({self.folder.describe() if self.folder else 'its weights'}, as {str(self.dtype).removeprefix('torch.')}) "
            f"and {have} of {where} is free on {self.device}; use a smaller model or a 4-bit GPTQ build, "
            "another device, or stop what else holds the memory", code="out_of_memory")

    def _load_failure(self, folder: Folder, exc: Exception) -> ModelLoadFailed:
        text = f"{type(exc).__name__}: {exc}".strip()
        low = text.lower()
        if "out of memory" in low:
            return ModelLoadFailed(f"model {self.model_id!r}: out of memory while loading {folder.path}: {text}",
                                   code="out_of_memory")
        if "does not recognize this architecture" in low or "model type" in low and "not" in low:
            return ModelLoadFailed(f"model {self.model_id!r}: this transformers version cannot load "
                                   f"{folder.path} ({text}); upgrade transformers, or set "
                                   "trust_remote_code: true if the folder brings its own code",
                                   code="unsupported_architecture")
        if isinstance(exc, OSError | FileNotFoundError) or "safetensors" in low or "no file named" in low:
            return ModelLoadFailed(f"model {self.model_id!r}: the weights in {folder.path} cannot be read "
                                   f"({text}); the download may be incomplete or corrupt", code="weights_unreadable")
        return ModelLoadFailed(f"model {self.model_id!r}: transformers could not load {folder.path}: {text}",
                               code="model_load_failed")

    def _learn_model(self, folder: Folder) -> None:
        model, tokenizer = self.model, self.tokenizer
        self.device = str(next(model.parameters()).device)
        trained = folder.context_length(self.knobs)
        limit = getattr(tokenizer, "model_max_length", None)
        self.context_length = trained or (limit if isinstance(limit, int) and limit < 10**7 else 2048)
        gen = getattr(model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        ids = eos if isinstance(eos, list) else [eos]
        self.eos = {int(i) for i in ids if i is not None}
        if tokenizer.eos_token_id is not None:
            self.eos.add(int(tokenizer.eos_token_id))
        self.template = "tokenizer" if getattr(tokenizer, "chat_template", None) else "fallback"
        if gen is not None and getattr(gen, "do_sample", False):
            self.defaults = Sampling(greedy=False, temperature=float(gen.temperature or 1.0),
                                     top_p=float(gen.top_p or 1.0), top_k=int(gen.top_k or 0))
        params = inspect.signature(model.forward).parameters
        self.takes_positions = "position_ids" in params

    # -- the OpenAI operations (served through run_continuous) -----------------------------

    def chat(self, payload: dict[str, Any], stop: threading.Event) -> Any:
        raise EngineError("this engine serves requests through its batch loop")  # pragma: no cover

    def complete(self, payload: dict[str, Any], stop: threading.Event) -> Any:
        raise EngineError("this engine serves requests through its batch loop")  # pragma: no cover

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    # -- the batch loop ----------------------------------------------------------------------

    def run_continuous(self, inbox: Inbox[Job]) -> None:
        with torch.inference_mode():
            self._loop(inbox)

    def _loop(self, inbox: Inbox[Job]) -> None:
        while True:
            for job in inbox.take():
                self._join(job, inbox)
            if not self.rows:
                if inbox.finish():
                    return
                continue
            try:
                self._step(inbox)
            except Exception as exc:  # noqa: BLE001 - every request in the batch gets it; the worker stays up
                log.exception("a decode step failed")
                error = _engine_error(exc)
                for row in self.rows:
                    row.job.fail(error)
                    inbox.done(row.job)
                self._reset()

    def _reset(self) -> None:
        self.rows = []
        self.cache = None
        self.mask = None

    def _join(self, job: Job, inbox: Inbox[Job]) -> None:
        """Prefill a new request alone and add it to the batch (or end it at once)."""
        if job.stop.is_set():
            inbox.done(job)
            return
        try:
            row = self._request(job)
            ids = torch.tensor([row.prompt], device=self.device)
            cache = DynamicCache(config=self.model.config)
            out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), cache=cache, use_cache=True)
            self.counters["prefills"] += 1
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None) or cache
            logits = out.logits[0, -1, :].float()
            token = self._sample(row, logits)
            if self._advance(row, token):
                self._finish(row, inbox)
                return
        except Exception as exc:  # noqa: BLE001 - this request's error (a 400, or the engine's)
            job.fail(exc if isinstance(exc, InvalidRequest | EngineError) else _engine_error(exc))
            inbox.done(job)
            return
        self._add(row, cache, len(row.prompt))

    def _add(self, row: _Row, cache: Any, length: int) -> None:
        if self.batchable and not all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None])):
            self.batchable = False
        if not self.batchable or not self.takes_positions:
            self.batchable = False
            row.cache = cache
            self.rows.append(row)
            return
        ones = torch.ones(1, length, dtype=torch.long, device=self.device)
        if self.cache is None or self.mask is None:
            self.cache, self.mask = cache, ones
        else:
            width = self.mask.shape[1]
            total = max(width, length)
            for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat([_pad_left(mine.keys, total - width), _pad_left(theirs.keys, total - length)])
                mine.values = torch.cat([_pad_left(mine.values, total - width),
                                         _pad_left(theirs.values, total - length)])
            self.mask = torch.cat([torch.nn.functional.pad(self.mask, (total - width, 0)),
                                   torch.nn.functional.pad(ones, (total - length, 0))])
        self.rows.append(row)
        self.counters["peak_batch"] = max(self.counters["peak_batch"], len(self.rows))

    def _step(self, inbox: Inbox[Job]) -> None:
        """One token for every request in the batch; the ones that end leave it."""
        gone = [i for i, row in enumerate(self.rows) if row.job.stop.is_set()]
        if gone:
            for i in gone:
                self.rows[i].finish = "cancelled"
                self._finish(self.rows[i], inbox)
            self._keep([i for i in range(len(self.rows)) if i not in gone])
            if not self.rows:
                return
        self.counters["decode_steps"] += 1
        if len(self.rows) > 1:
            self.counters["batched_steps"] += 1
        if self.batchable:
            assert self.mask is not None
            ids = torch.tensor([[row.last] for row in self.rows], device=self.device)
            positions = torch.tensor([[row.position] for row in self.rows], device=self.device)
            for row in self.rows:
                row.position += 1  # where the token fed now sits
            self.mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=torch.long,
                                                         device=self.device)], dim=1)
            out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                             cache=self.cache, use_cache=True)
            logits = out.logits[:, -1, :].float()
            rows_logits = [logits[i] for i in range(len(self.rows))]
        else:
            rows_logits = []
            for row in self.rows:
                ids = torch.tensor([[row.last]], device=self.device)
                out = self.model(input_ids=ids, cache=row.cache, use_cache=True)
                rows_logits.append(out.logits[0, -1, :].float())
        ended = []
        for i, (row, logits) in enumerate(zip(self.rows, rows_logits, strict=True)):
            if self._advance(row, self._sample(row, logits)):
                ended.append(i)
        if ended:
            for i in ended:
                self._finish(self.rows[i], inbox)
            self._keep([i for i in range(len(self.rows)) if i not in ended])

    def _keep(self, keep: list[int]) -> None:
        """Only these rows stay; padding every remaining row has is cut."""
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self._reset()
            return
        if not self.batchable or self.mask is None:
            return
        index = torch.tensor(keep, device=self.device)
        mask = self.mask.index_select(0, index)
        used = mask.sum(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        self.mask = mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:, :]
            layer.values = layer.values.index_select(0, index)[:, :, start:, :]

    # -- one request -------------------------------------------------------------------------

    def _request(self, job: Job) -> _Row:
        payload = job.payload
        if job.kind == "chat/completions":
            messages, prefill = split_prefill(payload, normalize_messages(payload.get("messages")))
            stops = stop_list(payload.get("stop"))
            if self.template == "tokenizer":
                try:
                    text = self.tokenizer.apply_chat_template(
                        messages, tools=payload.get("tools") or None, add_generation_prompt=True, tokenize=False)
                except Exception as exc:  # noqa: BLE001 - a template error is the request's problem
                    raise InvalidRequest(f"the model's chat template rejected these messages: {exc}",
                                         param="messages") from exc
                prompt = list(self.tokenizer(text + (prefill or ""), add_special_tokens=False)["input_ids"])
            else:
                text = fallback_prompt(messages) + (" " + prefill if prefill else "")
                prompt = list(self.tokenizer(text)["input_ids"])
                stops += FALLBACK_STOPS
        elif job.kind == "completions":
            text = payload.get("prompt", "")
            if isinstance(text, list):
                if len(text) != 1 or not isinstance(text[0], str):
                    raise InvalidRequest("one prompt string per request", param="prompt")
                text = text[0]
            if not isinstance(text, str):
                raise InvalidRequest("'prompt' must be a string", param="prompt")
            prompt = list(self.tokenizer(text)["input_ids"])
            stops = stop_list(payload.get("stop"))
        else:
            raise InvalidRequest(f"model {self.model_id!r} does not serve /v1/{job.kind}", param="model")
        if not prompt:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if int(payload.get("n") or 1) != 1:
            raise InvalidRequest("this model generates one choice per request (n must be 1)", param="n")
        if len(prompt) >= self.context_length:
            raise ContextLengthExceeded(self.context_length, len(prompt))
        limit = self.knobs.max_tokens_limit
        requested = payload.get("max_completion_tokens", payload.get("max_tokens"))
        if requested is not None and (not isinstance(requested, int) or isinstance(requested, bool) or requested < 1):
            raise InvalidRequest("'max_tokens' must be a positive integer", param="max_tokens")
        max_new = max(1, min(requested or limit, limit, self.context_length - len(prompt)))
        return _Row(job, self, prompt, max_new, self._sampling(payload), stops)

    def _sampling(self, payload: dict[str, Any]) -> Sampling:
        s = dataclasses.replace(self.defaults, logit_bias={})

        def number(name: str, low: float, high: float) -> float | None:
            value = payload.get(name)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise InvalidRequest(f"{name!r} must be a number from {low:g} to {high:g}", param=name)
            return float(value)

        temperature = number("temperature", 0, 2)
        if temperature is not None:
            s.greedy = temperature == 0
            s.temperature = temperature or 1.0
        top_p = number("top_p", 0, 1)
        if top_p is not None:
            s.top_p = top_p or 1.0
        top_k = number("top_k", -1, 1 << 20)
        if top_k is not None:
            s.top_k = max(0, int(top_k))
        s.presence_penalty = number("presence_penalty", -2, 2) or 0.0
        s.frequency_penalty = number("frequency_penalty", -2, 2) or 0.0
        s.repetition_penalty = number("repetition_penalty", 0.01, 100) or 1.0
        s.min_tokens = int(number("min_tokens", 0, 1 << 20) or 0)
        s.ignore_eos = bool(payload.get("ignore_eos"))
        seed = payload.get("seed")
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise InvalidRequest("'seed' must be an integer", param="seed")
            s.seed = seed
        bias = payload.get("logit_bias")
        if bias:
            try:
                s.logit_bias = {int(k): float(v) for k, v in bias.items()}
            except (AttributeError, TypeError, ValueError) as exc:
                raise InvalidRequest("'logit_bias' maps token ids to numbers", param="logit_bias") from exc
            vocab = self.model.config.get_text_config().vocab_size
            if any(not 0 <= k < vocab for k in s.logit_bias):
                raise InvalidRequest(f"'logit_bias' token ids must be below {vocab}", param="logit_bias")
        return s

    def _sample(self, row: _Row, logits: torch.Tensor) -> int:
        s = row.sampling
        if s.logit_bias:
            ids = torch.tensor(list(s.logit_bias), device=logits.device)
            logits[ids] += torch.tensor(list(s.logit_bias.values()), device=logits.device)
        if s.ignore_eos or len(row.generated) < s.min_tokens:
            logits[list(self.eos)] = -float("inf")
        if s.repetition_penalty != 1.0 and row.seen:
            ids = torch.tensor(sorted(row.seen), device=logits.device)
            picked = logits[ids]
            logits[ids] = torch.where(picked < 0, picked * s.repetition_penalty, picked / s.repetition_penalty)
        if (s.presence_penalty or s.frequency_penalty) and row.counts:
            ids = torch.tensor(list(row.counts), device=logits.device)
            counts = torch.tensor(list(row.counts.values()), device=logits.device, dtype=logits.dtype)
            logits[ids] -= s.presence_penalty + s.frequency_penalty * counts
        if s.greedy:
            return int(logits.argmax())
        logits = logits / s.temperature
        if s.top_k and s.top_k < logits.shape[-1]:
            cutoff = torch.topk(logits, s.top_k).values[-1]
            logits = logits.masked_fill(logits < cutoff, -float("inf"))
        if s.top_p < 1.0:
            ordered, order = torch.sort(logits, descending=True)
            cumulative = ordered.softmax(-1).cumsum(-1)
            drop = cumulative - ordered.softmax(-1) > s.top_p  # keep the first token past top_p
            logits[order[drop]] = -float("inf")
        probs = logits.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _advance(self, row: _Row, token: int) -> bool:
        """Take the sampled token; hand over its text. True when the request is over."""
        self.counters["tokens_generated"] += 1
        row.last = token
        if token in self.eos and not row.sampling.ignore_eos:
            row.finish = "stop"
            piece = self._flush(row)
        else:
            row.generated.append(token)
            row.counts[token] += 1
            row.seen.add(token)
            piece, stopped = row.stops.feed(row.detok.add(token))
            if stopped:
                row.finish = "stop"
            elif len(row.generated) >= row.max_new:
                row.finish = "length"
                piece += self._flush(row)
        if piece:
            self._emit(row, piece)
        return row.finish is not None

    @staticmethod
    def _flush(row: _Row) -> str:
        """The text held back at the end (an unfinished character, a stop string's start)."""
        more, stopped = row.stops.feed(row.detok.flush())
        return more if stopped else more + row.stops.flush()

    def _emit(self, row: _Row, piece: str) -> None:
        if not row.stream:
            row.text.append(piece)
            return
        if row.chat and not row.text:
            row.job.chunk(self._chunk(row, {"role": "assistant", "content": ""}, None))
        row.text.append(piece)
        row.job.chunk(self._chunk(row, {"content": piece}, None))

    def _chunk(self, row: _Row, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        if row.chat:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta.get("content", ""), "logprobs": None, "finish_reason": finish}
            kind = "text_completion"
        return {"id": row.id, "object": kind, "created": row.created, "model": row.model, "choices": [choice]}

    def _usage(self, row: _Row) -> dict[str, int]:
        done = len(row.generated)
        return {"prompt_tokens": len(row.prompt), "completion_tokens": done,
                "total_tokens": len(row.prompt) + done}

    def _finish(self, row: _Row, inbox: Inbox[Job]) -> None:
        """Hand over the request's end (unless its client has gone) and free its slot."""
        job = row.job
        try:
            if row.finish == "cancelled":
                job.end()
                return
            finish = row.finish or "stop"
            if row.stream:
                if row.chat and not row.text:
                    job.chunk(self._chunk(row, {"role": "assistant", "content": ""}, None))
                job.chunk(self._chunk(row, {}, finish))
                if row.include_usage:
                    job.chunk({"id": row.id, "object": "chat.completion.chunk" if row.chat else "text_completion",
                               "created": row.created, "model": row.model, "choices": [],
                               "usage": self._usage(row)})
                job.end()
                return
            text = "".join(row.text)
            if row.chat:
                choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                          "logprobs": None, "finish_reason": finish}
                kind = "chat.completion"
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                kind = "text_completion"
            job.result({"id": row.id, "object": kind, "created": row.created, "model": row.model,
                        "choices": [choice], "usage": self._usage(row)})
        finally:
            inbox.done(job)


def _pad_left(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` zero positions before the sequence axis (-2) of a [batch, heads, seq, dim] tensor."""
    return torch.nn.functional.pad(tensor, (0, 0, n, 0)) if n else tensor


def _bytes(dtype: torch.dtype) -> int:
    return int(torch.tensor([], dtype=dtype).element_size())


def _available_ram() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def _engine_error(exc: BaseException) -> EngineError:
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return EngineError(f"transformers ran out of memory while generating: {exc}; lower max_batch, "
                           "context_length or max_tokens_limit", code="out_of_memory")
    return EngineError(f"transformers failed while generating: {type(exc).__name__}: {exc}",
                       code="generation_failed")
