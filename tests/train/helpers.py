"""Test helpers for the train stage (tokenizers built in code)."""

from __future__ import annotations

from apidistill.testing.tiny_tokenizer import CHATML, char_tokenizer

__all__ = ["CHATML", "char_tokenizer"]
