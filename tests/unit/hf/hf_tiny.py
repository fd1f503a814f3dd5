"""Tiny randomly initialised transformers written in the Hugging Face layout, as a user's model folder is:

    write_bert(tmp / "bert")      # config.json, model.safetensors, tokenizer.json, tokenizer_config.json
    write_gpt2(tmp / "gpt2")      # + generation_config.json; byte-level BPE, <|endoftext|> as eos (no pad)
    write_llama(tmp / "llama")

2 layers, hidden size 32, a tokenizer trained with `tokenizers` on a few sentences and wrapped as
PreTrainedTokenizerFast, saved with `save_pretrained`. Nothing is downloaded.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

WORDS = ["great", "wonderful", "superb", "moving", "brilliant", "charming", "gripping", "delightful", "fresh",
         "awful", "boring", "dull", "clumsy", "tedious", "weak", "messy", "forgettable", "stale", "not",
         "the", "film", "plot", "actor", "scene", "music", "story", "camera", "director", "ending", "cast",
         "script", "was", "and", "with", "a", "of", "its", "this", "second", "half", "lead", "score", "pacing",
         "cat", "sat", "on", "mat", "dog", "ran", "in", "park"]
COUNTING = "one two three four five six seven eight nine ten"


def sentences(n: int = 60, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(n)] + [" ".join(WORDS), COUNTING]


def _silence():
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def wordpiece_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(sentences(), trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(sentences(), trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


def write_bert(folder: Path, max_positions: int = 64, seed: int = 0) -> Path:
    _silence()
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    tok = wordpiece_tokenizer()
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=max_positions, pad_token_id=tok.pad_token_id)
    BertForMaskedLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_gpt2(folder: Path, max_positions: int = 64, seed: int = 0) -> Path:
    _silence()
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    tok = bpe_tokenizer()
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=max_positions,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_llama(folder: Path, max_positions: int = 64, seed: int = 0) -> Path:
    _silence()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = bpe_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=max_positions,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_corpus(path: Path, paragraphs: int = 120, seed: int = 0) -> Path:
    """A plain-text corpus: paragraphs of a few lines, separated by blank lines, with a learnable pattern
    (every paragraph counts up 'one two three ...' before its sentence)."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(paragraphs):
        lines.append(COUNTING)
        lines.append(" ".join(rng.choice(WORDS, size=int(rng.integers(4, 10)))))
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


POSITIVE, NEGATIVE = WORDS[:9], WORDS[9:18]
NEUTRAL = WORDS[19:43]


def write_labelled(path: Path, rows: int = 160, seed: int = 0) -> Path:
    """Texts whose label is whether they hold positive or negative words (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["text", "label"])
        for _ in range(rows):
            good = bool(rng.random() < 0.5)
            words = list(rng.choice(NEUTRAL, size=int(rng.integers(2, 8))))
            words += list(rng.choice(POSITIVE if good else NEGATIVE, size=2))
            rng.shuffle(words)
            out.writerow([" ".join(words), "positive" if good else "negative"])
    return path
