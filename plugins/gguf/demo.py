"""Write a tiny, deterministic LLaMA-architecture GGUF: the demo model and the test model.

Nothing can be downloaded where the tests run, so this writes a real GGUF file with the
``gguf`` package that llama.cpp loads like any other: a SentencePiece-style vocabulary
(with the 256 ``<0xNN>`` byte tokens llama.cpp needs for non-ASCII input), a ChatML chat
template in the metadata, and weights arranged so the output is readable, deterministic
text instead of random bytes:

* every attention and feed-forward output projection is zero, so the residual stream is
  just the token embedding;
* the embedding is one-hot over a small set of "states" plus a constant dimension;
* the output head therefore reads a bigram table (state -> next token) plus a constant
  per-token bias that favours JSON structure tokens, so grammar-constrained output
  (``response_format``, tool calls) closes its strings and objects quickly.

The model answers every chat with ``Hello! I am a tiny demo model served by the router.``
and then its end-of-turn token; a JSON string it must write holds that sentence. With
end-of-turn banned (``logit_bias``) it repeats the sentence (each time followed by a
``"``) forever, which the tests use for long generations.

``write_demo_model(path, layers=12, hidden=768, ff=2048)`` writes the same model at a
realistic per-token cost (~100M parameters in f16) for benchmarks.

    python -m plugins.gguf.demo ./models            # writes ./models/tiny-demo.gguf
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEMO_NAME = "tiny-demo"
SENTENCE = ["Hello!", "▁I", "▁am", "▁a", "▁tiny", "▁demo", "▁model", "▁served", "▁by", "▁the", "▁router."]
REPLY = "Hello! I am a tiny demo model served by the router."
CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou can call these tools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% endif %}"
    "{% if message.get('tool_calls') %}{{ message['tool_calls'] | tojson }}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Per-token bias (logit units) for JSON structure, far below the bigram's 40.
_JSON_BIAS = {"}": 14.0, "]": 13.0, '"': 12.0, ",": 5.0}
_TARGET, _SECOND = 40.0, 25.0

# token types in tokenizer.ggml.token_type
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6


def vocabulary() -> tuple[list[str], list[int]]:
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [_UNKNOWN, _CONTROL, _CONTROL, _CONTROL, _CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [_BYTE] * 256
    for piece in ["▁", *(chr(c) for c in range(0x21, 0x7F)), *SENTENCE, "▁Hello!"]:
        if piece not in tokens:
            tokens.append(piece)
            types.append(_NORMAL)
    # Every prefix of the sentence's pieces too, so the SentencePiece tokenizer rebuilds
    # them from characters: the model's own answer, sent back as text (an assistant
    # prefill), tokenizes to the tokens it produced, and it goes on from there.
    for piece in [*SENTENCE, "▁Hello!"]:
        for end in range(2, len(piece)):
            if piece[:end] not in tokens:
                tokens.append(piece[:end])
                types.append(_NORMAL)
    return tokens, types


def write_demo_model(
    path: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    ff: int = 128,
    context_length: int = 32768,
    f16: bool = False,
) -> Path:
    """Write the demo GGUF to ``path`` (parents created) and return the path."""
    import gguf  # imported here: ~1 s, and only the demo writer needs it
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens, types = vocabulary()
    ids = {t: i for i, t in enumerate(tokens)}
    vocab, eos = len(tokens), ids["<|im_end|>"]
    if hidden < len(SENTENCE) + 3 or (hidden // heads) % 2:
        raise ValueError("hidden must hold one dimension per sentence token, with an even head size")
    other_dim, const_dim = hidden - 2, hidden - 1
    state = {ids[piece]: i for i, piece in enumerate(SENTENCE)}
    state[ids["▁Hello!"]] = state[ids["Hello!"]]

    embd = np.zeros((vocab, hidden), dtype=np.float32)
    for tok in range(vocab):
        embd[tok, state.get(tok, other_dim)] = 1.0
        embd[tok, const_dim] = 1.0
    # RMS norm turns the two ones into sqrt(hidden / 2): divide it out of the head.
    scale = float(np.sqrt(hidden / 2.0))
    head = np.zeros((vocab, hidden), dtype=np.float32)
    for i, piece in enumerate(SENTENCE):
        nxt = ids[SENTENCE[i + 1]] if i + 1 < len(SENTENCE) else eos
        head[nxt, i] = _TARGET / scale
    # What follows the sentence where end-of-turn is not allowed: a closing quote (so a
    # JSON string holds exactly the sentence), then the sentence again.
    head[ids['"'], len(SENTENCE) - 1] = _SECOND / scale
    head[ids["Hello!"], other_dim] = _TARGET / scale
    for piece, bias in _JSON_BIAS.items():
        head[ids[piece], const_dim] = bias / scale

    mat = np.float16 if f16 else np.float32
    tmp = path.with_name(path.name + ".tmp")  # renamed at the end: never half a file
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(DEMO_NAME if hidden == 64 else f"{DEMO_NAME}-{layers}x{hidden}")
    writer.add_context_length(context_length)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(1 if f16 else 0)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores([0.0 if t != _NORMAL else -float(len(tok)) for t, tok in zip(types, tokens)])
    writer.add_bos_token_id(ids["<s>"])
    writer.add_eos_token_id(eos)
    writer.add_unk_token_id(ids["<unk>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    writer.add_tensor("token_embd.weight", embd)
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("output.weight", head.astype(mat))
    zeros_sq = np.zeros((hidden, hidden), dtype=mat)
    for n in range(layers):
        writer.add_tensor(f"blk.{n}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{n}.{name}.weight", zeros_sq)
        writer.add_tensor(f"blk.{n}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"blk.{n}.ffn_gate.weight", np.zeros((ff, hidden), dtype=mat))
        writer.add_tensor(f"blk.{n}.ffn_up.weight", np.zeros((ff, hidden), dtype=mat))
        writer.add_tensor(f"blk.{n}.ffn_down.weight", np.zeros((hidden, ff), dtype=mat))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def ensure_demo_model(models_dir: str | Path) -> Path | None:
    """Write ``tiny-demo.gguf`` into ``models_dir`` when it holds no GGUF; return it if written."""
    directory = Path(models_dir)
    if directory.is_dir() and any(directory.rglob("*.gguf")):
        return None
    return write_demo_model(directory / f"{DEMO_NAME}.gguf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugins.gguf.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="a directory (writes tiny-demo.gguf there) or a .gguf path")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ff", type=int, default=128)
    parser.add_argument("--f16", action="store_true")
    args = parser.parse_args(argv)
    target = Path(args.target)
    if target.suffix != ".gguf":
        target = target / f"{DEMO_NAME}.gguf"
    written = write_demo_model(target, layers=args.layers, hidden=args.hidden, heads=args.heads,
                               ff=args.ff, f16=args.f16)
    print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
