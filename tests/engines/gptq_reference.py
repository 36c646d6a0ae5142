"""transformers called directly, for the gptq tests: greedy ``generate`` on a folder.

Run as a subprocess in a directory of its own (``import gptqmodel``, which transformers
does for a GPTQ folder, writes ./logs there): reads ``{"folder": ..., "cases": [...]}``
as JSON on stdin, prints one result per case as JSON on a ``RESULT`` line of stdout. A case is
``{"chat": messages}`` (the tokenizer's chat template) or ``{"text": prompt}``, with
``"tokens": N``: exactly N new tokens (end-of-sequence banned, as ``ignore_eos`` does).
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    request = json.load(sys.stdin)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    folder = request["folder"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu",
                                                 local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    out = []
    for case in request["cases"]:
        if "chat" in case:
            ids = tokenizer.apply_chat_template(case["chat"], add_generation_prompt=True, return_tensors="pt")
            ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
        else:
            ids = tokenizer(case["text"], return_tensors="pt")["input_ids"]
        n = case["tokens"]
        with torch.inference_mode():
            generated = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                       max_new_tokens=n, min_new_tokens=n, pad_token_id=tokenizer.pad_token_id)
        new = generated[0, ids.shape[1]:].tolist()
        out.append({"prompt_tokens": int(ids.shape[1]), "ids": new,
                    "text": tokenizer.decode(new, skip_special_tokens=True)})
    print("RESULT " + json.dumps(out), flush=True)  # gptqmodel prints on stdout too
    return 0


if __name__ == "__main__":
    sys.exit(main())
