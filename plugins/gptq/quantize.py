"""``python -m router quantize``: a full-precision Hugging Face folder to a GPTQ one.

    python -m router quantize --model ./models/opt-6.7b --out ./models/opt-6.7b-4bit \\
        [--bits 4] [--group-size 128] [--calibration FILE] [--device auto]

GPTQ quantizes one decoder layer at a time, measuring each on calibration text: a file of
samples (one per line, or a ``.jsonl`` with a ``"text"`` field per line), or a small
built-in English set (enough to try it; use text like the model's real use, a few
hundred samples, for quality). The output folder (weights, config with its
``quantization_config``, tokenizer, generation config) is served by the ``gptq``
provider as is.

gptqmodel does the work; it is imported here only, after moving to a working directory
of its own (it writes ``./logs`` there), with its own log sent to a file: stderr shows
one progress bar (the layers done) and the outcome.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from plugins.gptq.settings import check_device, inspect_folder
from plugins.gptq.worker import workdir
from router import Command, ModelLoadFailed

BUILTIN_CALIBRATION = (
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, in a small village by the sea, there lived an old fisherman.",
    "Machine learning models learn patterns from data and use them to make predictions.",
    "Please summarize the following article in three sentences.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "To install the package, run pip install followed by the package name.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "def add(a, b):\n    return a + b",
    "She opened the window and let the cool morning air into the room.",
    "The meeting has been moved to Thursday at three in the afternoon.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "In 1969, astronauts landed on the Moon for the first time.",
    "User: What is the weather like today?\nAssistant: It is sunny and warm.",
    "A router forwards each request to one of several servers that can answer it.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Explain the difference between a list and a tuple in Python.",
)
_LAYER = re.compile(r"Quantizing layer (\d+) of (\d+)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the full-precision Hugging Face model folder")
    parser.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")
    parser.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 8), help="bits per weight (default: 4)")
    parser.add_argument("--group-size", type=int, default=128,
                        help="weights sharing one scale; -1: one group per row (default: 128)")
    parser.add_argument("--calibration", help="calibration text: one sample per line, or .jsonl with 'text' "
                        "(default: a small built-in English set)")
    parser.add_argument("--samples", type=int, default=256, help="at most this many calibration samples")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    parser.add_argument("--desc-act", action=argparse.BooleanOptionalAction, default=False,
                        help="quantize columns by activation order (better quality, slower kernels)")
    parser.add_argument("--verbose", action="store_true", help="show gptqmodel's own log instead of a progress bar")


def calibration(path: str | None, limit: int) -> list[str]:
    if path is None:
        return list(BUILTIN_CALIBRATION)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read the calibration file {file}: {exc.strerror or exc}") from exc
    samples: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if file.suffix == ".jsonl":
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{file}:{n}: not JSON: {exc}") from exc
            value = item.get("text") if isinstance(item, dict) else None
            if not isinstance(value, str):
                raise ValueError(f"{file}:{n}: expected an object with a 'text' string")
            samples.append(value)
        else:
            samples.append(line)
    if not samples:
        raise ValueError(f"the calibration file {file} has no samples")
    return samples[:limit]


def check_source(args: argparse.Namespace) -> tuple[Path, Path]:
    """Everything that can be said before importing gptqmodel (clear errors, fast)."""
    check_device(args.device)
    folder = inspect_folder(args.model, "--model")
    if folder.quantization is not None:
        raise ValueError(f"{folder.path} is already quantized ({folder.describe()}); quantize a full-precision folder")
    config = _text_config(folder.config)
    if args.group_size != -1:
        if args.group_size < 1:
            raise ValueError("--group-size must be positive, or -1")
        for key in ("hidden_size", "intermediate_size", "ffn_dim"):
            width = config.get(key)
            if isinstance(width, int) and width % args.group_size:
                raise ValueError(f"{key} = {width} is not a multiple of --group-size {args.group_size}; "
                                 "use a divisor of it (e.g. 32, 64 or 128) or -1")
    out = Path(args.out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty folder; choose a new one")
    return folder.path.resolve(), out


class Progress:
    """A one-line progress bar on ``stream``, fed by gptqmodel's log file (the layer it is at)."""

    def __init__(self, stream: IO[str], log_file: Path, total: int) -> None:
        self.stream = stream
        self.log_file = log_file
        self.total = max(1, total)
        self.stage = "loading the model"
        self.done = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tty = stream.isatty()
        self._last = ""

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.draw(final=True)

    def set(self, stage: str, done: int | None = None) -> None:
        self.stage = stage
        if done is not None:
            self.done = done
        self.draw()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._read_log()
            self.draw()

    def _read_log(self) -> None:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")[-20000:]
        except OSError:
            return
        matches = _LAYER.findall(text)
        if matches:
            layer, of = matches[-1]
            # "layer N of M" counts from 0 to M (M = the last layer's index).
            self.total = int(of) + 1
            self.done = int(layer)
            self.stage = f"quantizing layer {int(layer) + 1} of {self.total}"

    def draw(self, final: bool = False) -> None:
        width = 30
        filled = int(width * min(self.done, self.total) / self.total)
        line = (f"\rquantize [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} layers "
                f"| {self.stage} | {time.monotonic() - self.started:.0f}s")
        if not self._tty and not final and line == self._last:
            return
        self._last = line
        self.stream.write(line.ljust(100) if self._tty else line.lstrip("\r") + "\n")
        if final and self._tty:
            self.stream.write("\n")
        self.stream.flush()


@contextlib.contextmanager
def _output_to(log_file: Path) -> Iterator[IO[str]]:
    """Send fds 1 and 2 (gptqmodel's and torch's prints) to ``log_file``; yield the real stderr."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    real = os.fdopen(os.dup(2), "w", buffering=1)
    with open(log_file, "w", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield real
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            real.close()


def quantize(source: Path, out: Path, args: argparse.Namespace, samples: list[str], progress: Progress) -> None:
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
    os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")  # else a ~1 minute C++ build on the first run
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    device = args.device
    if device == "auto":
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadFailed(f"--device {device}: torch sees no CUDA GPU (torch {torch.__version__}); "
                              "use --device cpu", code="cuda_unavailable")
    progress.set(f"importing gptqmodel ({device})")
    from gptqmodel import GPTQModel, QuantizeConfig

    progress.set("loading the model")
    config = QuantizeConfig(bits=args.bits, group_size=args.group_size, desc_act=args.desc_act, sym=True)
    model = GPTQModel.load(str(source), config, device=device)
    progress.set(f"calibrating on {len(samples)} samples")
    model.quantize(samples, batch_size=1)
    progress.set("saving", progress.total)
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    # gptqmodel rewrites generation_config.json (it turns sampling on); keep the model's own.
    own = source / "generation_config.json"
    if own.is_file():
        shutil.copyfile(own, out / "generation_config.json")
    progress.set("done", progress.total)


def run(args: argparse.Namespace) -> int:
    try:
        source, out = check_source(args)
        samples = calibration(args.calibration, args.samples)
    except (ValueError, ModelLoadFailed) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    if any(importlib.util.find_spec(name) is None for name in ("torch", "transformers", "gptqmodel")):
        print("error: quantize needs torch, transformers and gptqmodel: pip install '.[gptq]'", file=sys.stderr)
        return 2
    here = workdir()
    log_file = here / f"quantize-{out.name}.log"
    started = time.monotonic()
    folder = inspect_folder(source)
    layers = _layers(folder.config)
    cwd = os.getcwd()
    os.chdir(here)
    try:
        if args.verbose:
            with Progress(sys.stderr, log_file, layers) as progress:
                quantize(source, out, args, samples, progress)
        else:
            with _output_to(log_file) as stderr, Progress(stderr, log_file, layers) as progress:
                quantize(source, out, args, samples, progress)
    except ModelLoadFailed as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - gptqmodel's own errors, with where its log is
        print(f"error: quantizing failed: {type(exc).__name__}: {exc} (gptqmodel's log: {log_file})", file=sys.stderr)
        return 1
    finally:
        os.chdir(cwd)
    result = inspect_folder(out)
    print(f"wrote {out} ({result.describe()}) in {time.monotonic() - started:.1f}s; "
          f"serve it with provider: gptq, path: {out}", file=sys.stderr)
    return 0


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a (possibly multimodal) config."""
    text = config.get("text_config")
    return text if isinstance(text, dict) else config


def _layers(config: dict[str, Any]) -> int:
    text = _text_config(config)
    value = text.get("num_hidden_layers") or text.get("n_layer") or text.get("num_layers") or 1
    return int(value)


COMMAND = Command(name="quantize", help="quantize a full-precision Hugging Face model folder to GPTQ "
                  "(served by the gptq provider)", run=run, add_arguments=add_arguments)
