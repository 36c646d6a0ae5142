"""The llama.cpp side of a worker: load one model, turn OpenAI requests into llama calls.

Imported only inside worker processes (``llama_cpp`` is never imported by the router).
Everything here is synchronous and runs on the worker's single generation thread: one
``Llama`` instance must never run two calls at once (concurrent calls crash the process).

Chat prompts are formatted here (not inside ``create_chat_completion``) so the worker
knows the real prompt token count before generating: it can refuse a prompt longer than
the context with a clear 400, cap ``max_tokens`` to what fits, report real usage in
streams, and pre-fill the prompt cache for a given history (``warm``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import llama_cpp
from llama_cpp import llama_cache, llama_chat_format, llama_grammar

from plugins.gguf import llama_log
from plugins.gguf.settings import WorkerSettings, missing_model
from router import ContextLengthExceeded, EngineError, InvalidRequest, ModelLoadFailed
from router.workers import Engine, Extension, split_prefill

# -- the engine ------------------------------------------------------------------------------

_SAMPLING_FIELDS = {
    "temperature": float, "top_p": float, "top_k": int, "min_p": float, "typical_p": float,
    "repeat_penalty": float, "presence_penalty": float, "frequency_penalty": float,
    "seed": int, "mirostat_mode": int, "mirostat_tau": float, "mirostat_eta": float,
}


class LlamaEngine(Engine):
    """One GGUF model in one ``Llama`` instance, one request at a time."""

    owned_by = "gguf"
    label = "llama.cpp"
    max_batch = 1  # concurrent calls on one Llama instance crash the process

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.knobs = settings.knobs
        self.llama: llama_cpp.Llama | None = None
        self.formatter: llama_chat_format.Jinja2ChatFormatter | None = None
        self.n_ctx = 0
        self.load_s = 0.0

    # -- loading ---------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.settings.served_id

    def card(self) -> dict[str, Any]:
        return {"path": self.settings.model}

    def extensions(self) -> list[Extension]:
        # The router forwards only the OpenAI endpoints: a chat body with
        # "restore_cache": true reaches the warm-up through it.
        return [Extension("restore_cache", self.warm, path="/restore_cache", body_flag="restore_cache",
                          summary="pre-fill the prompt cache for a chat history")]

    def load(self) -> None:
        s = self.knobs
        path = Path(self.settings.model)
        if not path.is_file():
            raise missing_model(path.resolve())
        llama_log.install_log_capture(echo=s.verbose)
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ModelLoadFailed(
                f"{path.resolve()} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
                "convert it with llama.cpp's convert_hf_to_gguf.py or download a .gguf build",
                code="not_gguf",
            )
        llama_log.clear()  # what follows is this load's log only
        started = time.monotonic()
        try:
            self.llama = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=s.n_ctx,
                n_gpu_layers=s.n_gpu_layers,
                n_threads=s.n_threads,
                n_threads_batch=s.n_threads_batch,
                n_batch=s.n_batch,
                embedding=s.embedding,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN if s.embedding else -1,
                chat_format=s.chat_format,
                verbose=s.verbose,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            reason = llama_log.load_reason() or str(exc)
            raise ModelLoadFailed(_explain_load_failure(path, reason), code=_load_code(reason)) from exc
        # Re-install ours: Llama(verbose=...) may have replaced the log callback.
        llama_log.reinstall()
        self.load_s = time.monotonic() - started
        llama = self.llama
        # llama.cpp may pad n_ctx; what the user asked for is the limit we enforce.
        self.n_ctx = min(s.n_ctx, llama.n_ctx()) if s.n_ctx else llama.n_ctx()
        template = llama.metadata.get("tokenizer.chat_template")
        if s.chat_format is None and template:
            vocab = llama._model.vocab
            eos = llama_cpp.llama_vocab_eos(vocab)
            bos = llama_cpp.llama_vocab_bos(vocab)
            self.formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llama._model.token_get_text(bos) if bos != -1 else "",
                stop_token_ids=[eos] if eos != -1 else None,
            )
        if s.prompt_cache == "ram":
            llama.set_cache(llama_cache.LlamaRAMCache(capacity_bytes=s.prompt_cache_mb << 20))
        elif s.prompt_cache == "disk":
            directory = s.prompt_cache_dir or str(path.with_suffix(".cache"))
            llama.set_cache(llama_cache.LlamaDiskCache(cache_dir=directory, capacity_bytes=s.prompt_cache_mb << 20))

    def info(self) -> dict[str, Any]:
        llama = self._llama()
        return {
            "n_ctx": self.n_ctx,
            "n_ctx_train": llama.n_ctx_train() if hasattr(llama, "n_ctx_train") else None,
            "n_vocab": llama.n_vocab(),
            "embedding": self.knobs.embedding,
            "chat_template": "gguf" if self.formatter else (llama.chat_format or "none"),
            "load_s": round(self.load_s, 3),
        }

    def _llama(self) -> llama_cpp.Llama:
        if self.llama is None:
            raise EngineError("the model is not loaded yet")
        return self.llama

    # -- requests --------------------------------------------------------------------------

    def chat(self, payload: dict[str, Any], stop: threading.Event) -> Any:
        """A chat completion: a dict, or an iterator of chunks when ``stream`` is set."""
        llama = self._llama()
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty list", param="messages")
        tools = payload.get("tools") or None
        tool_choice = payload.get("tool_choice")
        if self.formatter is None:  # a named chat_format: llama-cpp-python formats and counts
            return self._chat_builtin(payload, stop)
        messages, prefill = split_prefill(payload, messages)
        prompt, extra_stop, criteria = self.format_chat(messages, tools, tool_choice, prefill)
        kwargs = self._sampling(payload, len(prompt))
        kwargs["stop"] = _stop_list(payload.get("stop")) + extra_stop
        grammar, tool = self._grammar(payload, tools, tool_choice)
        stream = bool(payload.get("stream"))
        counter = _TokenCounter(llama, len(prompt)) if stream else None
        evals_before = _prompt_evals(llama)
        result = llama.create_completion(
            prompt=prompt, stream=stream, grammar=grammar,
            stopping_criteria=_stopping(stop, criteria),
            logits_processor=_processors(counter, kwargs.pop("logit_bias", None)),
            **kwargs,
        )
        model = self.settings.served_id
        if tool is not None:
            converted = llama_chat_format._convert_completion_to_chat_function(  # noqa: SLF001
                tool["function"]["name"], result, stream
            )
        else:
            converted = llama_chat_format._convert_completion_to_chat(result, stream=stream)  # noqa: SLF001
        if not stream:
            converted["model"] = model
            cached = _cached(len(prompt), _prompt_evals(llama) - evals_before)
            converted["usage"]["prompt_tokens_details"] = {"cached_tokens": cached}
            return converted
        return self._stream_with_usage(converted, payload, len(prompt), counter, model)

    def _chat_builtin(self, payload: dict[str, Any], stop: threading.Event) -> Any:
        llama = self._llama()
        kwargs = self._sampling(payload, 0)
        kwargs["stop"] = _stop_list(payload.get("stop"))
        grammar, _ = self._grammar(payload, None, None)
        bias = kwargs.pop("logit_bias", None)
        chain: list[Any] = [_EndWhenStopped(stop, llama.token_eos()), *([_LogitBias(bias)] if bias else [])]
        try:
            return llama.create_chat_completion(
                messages=payload["messages"], tools=payload.get("tools"),
                tool_choice=payload.get("tool_choice"), stream=bool(payload.get("stream")),
                grammar=grammar, logits_processor=llama_cpp.LogitsProcessorList(chain), **kwargs,
            )
        except ValueError as exc:
            if "exceed context window" in str(exc):
                raise ContextLengthExceeded(self.n_ctx, None) from exc
            raise InvalidRequest(str(exc)) from exc

    def format_chat(self, messages: list[Any], tools: Any, tool_choice: Any,
                    prefill: str | None = None) -> tuple[list[int], list[str], Any]:
        """The prompt's tokens (the template's, then ``prefill``: the start of the answer
        to go on from), its stop strings and stopping criteria."""
        assert self.formatter is not None
        try:
            result = self.formatter(messages=messages, tools=tools, tool_choice=tool_choice)
        except Exception as exc:  # noqa: BLE001 - a template error is the request's problem
            raise InvalidRequest(f"the model's chat template rejected these messages: {exc}", param="messages") from exc
        # The prefill is tokenized with the prompt, as one text: alone, it would get a
        # leading space (SentencePiece) and other tokens than the model produced.
        text = result.prompt + (prefill or "")
        prompt = self._llama().tokenize(text.encode("utf-8"), add_bos=not result.added_special, special=True)
        extra = [] if result.stop is None else [result.stop] if isinstance(result.stop, str) else list(result.stop)
        return prompt, extra, result.stopping_criteria

    def complete(self, payload: dict[str, Any], stop: threading.Event) -> Any:
        llama = self._llama()
        prompt_in = payload.get("prompt", "")
        if isinstance(prompt_in, list):
            if len(prompt_in) != 1 or not isinstance(prompt_in[0], str):
                raise InvalidRequest("one prompt string per request", param="prompt")
            prompt_in = prompt_in[0]
        if not isinstance(prompt_in, str):
            raise InvalidRequest("'prompt' must be a string", param="prompt")
        prompt = llama.tokenize(prompt_in.encode("utf-8"), add_bos=True, special=False)
        kwargs = self._sampling(payload, len(prompt))
        kwargs["stop"] = _stop_list(payload.get("stop"))
        grammar, _ = self._grammar(payload, None, None)
        stream = bool(payload.get("stream"))
        counter = _TokenCounter(llama, len(prompt)) if stream else None
        result = llama.create_completion(
            prompt=prompt, stream=stream, grammar=grammar, echo=bool(payload.get("echo")),
            suffix=payload.get("suffix"), stopping_criteria=_stopping(stop, None),
            logits_processor=_processors(counter, kwargs.pop("logit_bias", None)),
            **kwargs,
        )
        model = self.settings.served_id
        if not stream:
            whole = cast(dict[str, Any], result)
            whole["model"] = model
            return whole  # (no cached_tokens: legacy completions predate the field)
        return self._stream_with_usage(cast(Iterator[dict[str, Any]], result), payload, len(prompt),
                                       counter, model)

    def embed(self, payload: dict[str, Any], stop: threading.Event) -> dict[str, Any]:
        if not self.knobs.embedding:
            raise InvalidRequest(
                f"model {self.settings.served_id!r} does not serve embeddings; "
                "declare it with 'embedding: true' in the backend's models list",
                param="model",
            )
        inputs = payload.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs) or not inputs:
            raise InvalidRequest("'input' must be a string or a list of strings", param="input")
        llama = self._llama()
        for text in inputs:
            n = len(llama.tokenize(text.encode("utf-8"), add_bos=True))
            if n > self.n_ctx:
                raise ContextLengthExceeded(self.n_ctx, n)
        result = llama.create_embedding(inputs, model=self.settings.served_id)
        return dict(result)

    def warm(self, payload: dict[str, Any], stop: threading.Event) -> dict[str, Any]:
        """Evaluate a chat history (and tools) so the next request with that prefix skips it."""
        llama = self._llama()
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty list", param="messages")
        if self.formatter is None:
            raise InvalidRequest("warm-up needs the GGUF's own chat template (chat_format is set)")
        # The prompt as the next request will see it: the history plus the assistant turn start.
        prompt, _, _ = self.format_chat(messages, payload.get("tools") or None, payload.get("tool_choice"))
        if len(prompt) >= self.n_ctx:
            raise ContextLengthExceeded(self.n_ctx, len(prompt))
        started = time.monotonic()
        before = _prompt_evals(llama)
        llama.create_completion(prompt=prompt, max_tokens=1, temperature=0.0)
        evaluated = _prompt_evals(llama) - before
        return {
            "object": "cache.warm",
            "model": self.settings.served_id,
            "prompt_tokens": len(prompt),
            "evaluated_tokens": evaluated,
            "cache": self.knobs.prompt_cache or "kv",
            "time_s": round(time.monotonic() - started, 4),
        }

    # -- helpers ---------------------------------------------------------------------------

    def _sampling(self, payload: dict[str, Any], prompt_len: int) -> dict[str, Any]:
        if prompt_len >= self.n_ctx:
            raise ContextLengthExceeded(self.n_ctx, prompt_len)
        if int(payload.get("n") or 1) != 1:
            raise InvalidRequest("this model generates one choice per request (n must be 1)", param="n")
        kwargs: dict[str, Any] = {}
        for name, convert in _SAMPLING_FIELDS.items():
            value = payload.get(name)
            if value is not None:
                try:
                    kwargs[name] = convert(value)
                except (TypeError, ValueError) as exc:
                    raise InvalidRequest(f"{name!r} must be a number", param=name) from exc
        limit = self.knobs.max_tokens_limit
        requested = payload.get("max_completion_tokens", payload.get("max_tokens"))
        if requested is not None and (not isinstance(requested, int) or requested < 1):
            raise InvalidRequest("'max_tokens' must be a positive integer", param="max_tokens")
        # llama-cpp-python reads None/0 as "until the context is full": always pass a number.
        room = self.n_ctx - prompt_len if prompt_len else limit
        kwargs["max_tokens"] = max(1, min(requested or limit, limit, room))
        bias = payload.get("logit_bias")
        if bias:
            try:
                kwargs["logit_bias"] = {int(k): float(v) for k, v in bias.items()}
            except (AttributeError, TypeError, ValueError) as exc:
                raise InvalidRequest("'logit_bias' maps token ids to numbers", param="logit_bias") from exc
            n_vocab = self._llama().n_vocab()
            if any(not 0 <= k < n_vocab for k in kwargs["logit_bias"]):
                raise InvalidRequest(f"'logit_bias' token ids must be below {n_vocab}", param="logit_bias")
        return kwargs

    def _grammar(self, payload: dict[str, Any], tools: Any, tool_choice: Any) -> tuple[Any, Any]:
        """The grammar that enforces ``response_format`` or a forced tool call."""
        schema: Any = None
        tool = None
        fmt = payload.get("response_format")
        if isinstance(fmt, dict):
            kind = fmt.get("type")
            if kind == "json_schema":
                spec = fmt.get("json_schema") or {}
                schema = spec.get("schema") if isinstance(spec, dict) else None
                if not isinstance(schema, dict):
                    raise InvalidRequest("response_format.json_schema.schema must be an object",
                                     param="response_format")
            elif kind == "json_object":
                schema = fmt.get("schema") or True
            elif kind not in (None, "text"):
                raise InvalidRequest(f"unsupported response_format type {kind!r}", param="response_format")
        if isinstance(tool_choice, dict) and tools:
            name = (tool_choice.get("function") or {}).get("name")
            tool = next((t for t in tools if t.get("function", {}).get("name") == name), None)
            if tool is None:
                raise InvalidRequest(f"tool_choice names {name!r}, which is not in 'tools'", param="tool_choice")
            schema = tool["function"].get("parameters") or {"type": "object"}
        elif tool_choice == "required" and tools:
            if len(tools) == 1:
                tool = tools[0]
                schema = tool["function"].get("parameters") or {"type": "object"}
        if schema is None:
            return None, None
        if schema is True:
            return llama_grammar.LlamaGrammar.from_string(llama_grammar.JSON_GBNF, verbose=False), tool
        try:
            return llama_grammar.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False), tool
        except Exception as exc:  # noqa: BLE001 - the converter raises plain Exceptions
            raise InvalidRequest(f"llama.cpp cannot turn this JSON schema into a grammar: {exc}",
                             param="response_format") from exc

    def _stream_with_usage(self, chunks: Iterator[dict[str, Any]], payload: dict[str, Any],
                           prompt_len: int, counter: _TokenCounter | None, model: str) -> Iterator[dict[str, Any]]:
        last: dict[str, Any] | None = None
        finish = None
        for chunk in chunks:
            chunk["model"] = model
            last = chunk
            finish = (chunk.get("choices") or [{}])[0].get("finish_reason") or finish
            yield chunk
        if (payload.get("stream_options") or {}).get("include_usage") and last is not None and counter:
            # The counter saw every sampling step; an end-of-turn token is sampled but, as in
            # llama-cpp-python's own usage, not counted. (With stop strings requested, a
            # "stop" may also come from one of them: then the count can be one high.)
            done = counter.count
            if finish == "stop" and not payload.get("stop"):
                done -= 1
            yield {
                "id": last.get("id"), "object": last.get("object"), "created": last.get("created"),
                "model": model, "choices": [],
                "usage": {"prompt_tokens": prompt_len, "completion_tokens": done,
                          "total_tokens": prompt_len + done,
                          "prompt_tokens_details": {"cached_tokens": counter.cached}},
            }


class _TokenCounter:
    """A logits processor that only counts: it runs once per generated token. On the first
    call the prompt has just been evaluated, so it also learns how much was reused."""

    def __init__(self, llama: llama_cpp.Llama, prompt_len: int) -> None:
        self.count = 0
        self.llama = llama
        self.prompt_len = prompt_len
        self.evals_before = _prompt_evals(llama)
        self.cached = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.count == 0:
            self.cached = _cached(self.prompt_len, _prompt_evals(self.llama) - self.evals_before)
        self.count += 1
        return scores


def _cached(prompt_len: int, evaluated: int) -> int:
    """Prompt tokens reused from the KV cache or the prompt cache. llama.cpp counts batches
    of one token as generation, and llama-cpp-python always re-evaluates the last prompt
    token, so at least one token counts as evaluated."""
    return max(0, prompt_len - max(evaluated, 1))


class _LogitBias:
    """OpenAI's ``logit_bias``, applied here: llama-cpp-python 0.3.36 drops its own
    ``logit_bias`` whenever a logits processor is also given (``list.extend`` returns None)."""

    def __init__(self, bias: dict[int, float]) -> None:
        self.ids = list(bias)
        self.values = list(bias.values())

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        scores[self.ids] += self.values
        return scores


class _EndWhenStopped:
    """For ``create_chat_completion``, which takes no stopping criteria: once the client
    has gone, only end-of-sequence is left to sample, so generation ends within a token."""

    def __init__(self, stop: threading.Event, eos: int) -> None:
        self.stop = stop
        self.eos = eos

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.stop.is_set():
            scores[:] = -float("inf")
            scores[self.eos] = 0.0
        return scores


def _processors(counter: _TokenCounter | None, bias: dict[int, float] | None) -> Any:
    chain: list[Any] = [p for p in (counter, _LogitBias(bias) if bias else None) if p is not None]
    return llama_cpp.LogitsProcessorList(chain) if chain else None


def _stopping(stop: threading.Event, extra: Any) -> llama_cpp.StoppingCriteriaList:
    # Checked by llama-cpp-python after every token: a disconnect stops within one token.
    criteria: list[Callable[[Any, Any], bool]] = [lambda _ids, _logits: stop.is_set()]
    if extra is not None:
        criteria.extend(extra)
    return llama_cpp.StoppingCriteriaList(criteria)


def _stop_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidRequest("'stop' must be a string or a list of strings", param="stop")


def _prompt_evals(llama: llama_cpp.Llama) -> int:
    data = llama_cpp.llama_perf_context(llama._ctx.ctx)
    return int(data.n_p_eval)


def _load_code(reason: str) -> str:
    low = reason.lower()
    if "alloc" in low or "out of memory" in low or "memory" in low:
        return "out_of_memory"
    if "architecture" in low:
        return "unsupported_architecture"
    return "model_load_failed"


def _explain_load_failure(path: Path, reason: str) -> str:
    code = _load_code(reason)
    hint = {
        "out_of_memory": "not enough memory: lower n_ctx or n_gpu_layers, or use a smaller quantization",
        "unsupported_architecture": "this llama-cpp-python build does not know the model's architecture; "
                                    "upgrade llama-cpp-python or use another GGUF",
        "model_load_failed": "the file may be truncated or corrupt; download it again",
    }[code]
    return f"llama.cpp could not load {path.resolve()}: {reason} ({hint})"
