"""A tiny LLaMA folder written offline, for tests, the benchmark and trying the provider.

    python -m plugins.gptq.tiny DIR [--no-chat-template] [--layers 2] [--hidden 128]

Random weights (a fixed seed, so every run writes the same model) and a byte-level BPE
tokenizer trained here with ``tokenizers`` on a few English sentences, wrapped in
``PreTrainedTokenizerFast`` with a chat template. Its vocabulary holds only characters
seen in that text (no byte tokens), so every token decodes to whole characters. Nothing
is downloaded. torch, transformers and tokenizers are imported when a model is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CORPUS = (
    "Hello world, this is a tiny model served by the router.",
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time there was a router serving models to many users.",
    "User: What can you do?\nAssistant: I can answer questions, write text and summarize.",
    "System: You are a helpful assistant. Keep answers short and clear.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation: . , ; : ! ? ' \" ( ) - _ / @ # % & * + = < > [ ] { }",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz",
)
SPECIALS = ("<s>", "</s>", "<unk>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_tiny_model(path: str | Path, *, layers: int = 2, hidden: int = 128, heads: int = 4,
                     intermediate: int | None = None, context: int = 4096, vocab: int = 400,
                     chat_template: bool = True, seed: int = 0) -> Path:
    """Write the folder (config.json, model.safetensors, tokenizer files); return its path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=list(SPECIALS), show_progress=False)
    tok.train_from_iterator(list(CORPUS) * 8, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=context, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out))
    fast.save_pretrained(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--no-chat-template", action="store_true")
    args = parser.parse_args(argv)
    path = write_tiny_model(args.out, layers=args.layers, hidden=args.hidden, heads=args.heads,
                            chat_template=not args.no_chat_template)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
