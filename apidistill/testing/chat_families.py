"""Tokenizers of four chat families, built in code with their chat templates (no hub).

No package on the registries ships the Qwen2.5, Llama 3.x, Gemma or Phi-3 tokenizers, and
tests must not download them. What training needs from them is the chat template — where
a turn starts and ends, and which special tokens mark it — so each family here is the
character tokenizer plus that family's special tokens, its ``eos_token`` as the released
base tokenizer sets it, and its template's turn structure (the released templates, less the
tool-calling and date branches). In all four the token that ends an assistant turn differs
from ``eos_token``: the case a student trained on ``eos_token`` never learns to stop at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apidistill.testing.tiny_tokenizer import char_tokenizer

__all__ = ["FAMILIES", "ChatFamily", "family_tokenizer"]


@dataclass(frozen=True)
class ChatFamily:
    template: str
    specials: tuple[str, ...]
    eos_token: str
    end_of_turn: str  # what the template writes after an assistant turn's content
    bos_token: str | None = None
    pad_token: str = "<pad>"


_QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_LLAMA3 = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

_GEMMA = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)

_PHI3 = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'user' %}"
    "{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)

FAMILIES: dict[str, ChatFamily] = {
    "qwen2.5": ChatFamily(_QWEN25, ("<|im_start|>", "<|im_end|>"), "<|endoftext|>", "<|im_end|>"),
    "llama3": ChatFamily(
        _LLAMA3,
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "<|end_of_text|>",
        "<|eot_id|>",
        bos_token="<|begin_of_text|>",
    ),
    "gemma": ChatFamily(
        _GEMMA, ("<start_of_turn>", "<end_of_turn>"), "<eos>", "<end_of_turn>", bos_token="<bos>"
    ),
    "phi3": ChatFamily(
        _PHI3,
        ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
        "<|endoftext|>",
        "<|end|>",
        bos_token="<s>",
    ),
}


def family_tokenizer(name: str) -> Any:
    """A fast tokenizer with ``FAMILIES[name]``'s specials, ``eos_token`` and template."""
    fam = FAMILIES[name]
    return char_tokenizer(
        fam.template,
        specials=fam.specials,
        eos_token=fam.eos_token,
        bos_token=fam.bos_token,
        pad_token=fam.pad_token,
    )
