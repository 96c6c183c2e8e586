"""Make a small checkpoint folder the way Hugging Face makes one, to try `specc import` and `specc train
--init-from` without downloading anything: a GPT-2-shaped model built from a config object, saved with
`save_pretrained` in shards with their index, and a byte-level BPE `tokenizer.json` trained here with `tokenizers`
on specc's built-in corpus. The model is untrained (random weights): what it shows is the path, not the text.

    python docs/examples/make_hf_folder.py hf-tiny
    specc import hf-tiny -o tiny.spec
    specc train tiny.spec --init-from hf-tiny --lora 8 --lora-targets "*.attn.qkv" --steps 100 --out runs/tiny-lora

Needs transformers and tokenizers (`pip install -e ".[dev]"` installs both). A folder that exists is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the folder to create (must not exist)")
    ap.add_argument("--vocab", type=int, default=512, help="BPE vocabulary size (default 512)")
    args = ap.parse_args(argv)
    if args.out.exists():
        print(f"error: '{args.out}' exists; give a new folder", file=sys.stderr)
        return 2
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from specdsl.train.data import builtin_text

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([builtin_text()], trainers.BpeTrainer(
        vocab_size=args.vocab, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    # GPT-2's layout at a size a laptop fine-tunes in a minute: 2 layers, 4 heads, d 64, context 64.
    config = GPT2Config(vocab_size=bpe.get_vocab_size(), n_positions=64, n_embd=64, n_layer=2, n_head=4,
                        bos_token_id=None, eos_token_id=None)  # this tokenizer has no special tokens
    model = GPT2LMHeadModel(config)
    hf_logging.disable_progress_bar()
    model.save_pretrained(args.out, max_shard_size="100KB")  # sharded, with model.safetensors.index.json
    bpe.save(str(args.out / "tokenizer.json"))
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: GPT-2-shaped, {params:,} parameters, vocabulary {config.vocab_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
