"""A character-level tokenizer with ChatML specials, built in code (no hub download).

Tests and examples need a real fast tokenizer with a chat template but must not fetch one;
~100 ids keep random-init models built on it tiny.
"""

from __future__ import annotations

import string
from typing import Any

__all__ = ["CHATML", "char_tokenizer"]

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def char_tokenizer(
    chat_template: str | None = CHATML,
    *,
    specials: tuple[str, ...] = ("<|im_start|>", "<|im_end|>"),
    eos_token: str = "<|im_end|>",
    bos_token: str | None = None,
    pad_token: str = "<pad>",
) -> Any:
    """One id per printable character plus ``<unk>``, ``pad_token`` and ``specials``.

    The defaults are ChatML (``<unk> <pad> <|im_start|> <|im_end|>``); other chat families
    (:mod:`apidistill.testing.chat_families`) pass their own special tokens.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    named = [t for t in (pad_token, eos_token, bos_token) if t is not None]
    ordered = ["<unk>", *dict.fromkeys([pad_token, *specials, *named])]
    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {t: i for i, t in enumerate(ordered + chars)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        pad_token=pad_token,
        eos_token=eos_token,
        bos_token=bos_token,
        additional_special_tokens=[t for t in specials if t not in named],
    )
    tok.chat_template = chat_template
    return tok
