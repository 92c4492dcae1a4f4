"""GGUF export of a merged student, for llama.cpp and Ollama (f16, q8_0, q4_k_m).

Why this route and not llama.cpp's converter: the converter is a script in llama.cpp's source
tree, not a package, and it re-derives the tokenizer from ``tokenizer.json`` (its
pre-tokenizer is picked by hashing a test string). A student is a LoRA on a base model that
apidistill already loaded from a GGUF (the embedded models), so the base GGUF already holds
the tokenizer metadata llama.cpp accepts. Export copies those ``tokenizer.*`` keys, writes the
architecture keys from the student's ``config.json``, the student's chat template (the one
with the baked system prompt) and the merged weights under GGUF tensor names, with the query
and key rows permuted as llama.cpp's converter does (transformers' GGUF loader undoes the
same permutation, :func:`unpermute_qk`). Quantized files are made from the f16 file by
llama.cpp itself (``llama_cpp.llama_model_quantize``), so they are what llama.cpp would make.

Only the llama architecture is written here (SmolLM2, Llama, TinyLlama...); any other
architecture is refused with the list of what is supported. The student's tokenizer must be
the base GGUF's token for token, which is checked, not assumed.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apidistill.errors import ExportError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "GGUF_QUANTS",
    "SUPPORTED_ARCHITECTURES",
    "MergedStudent",
    "base_gguf_path",
    "check_architecture",
    "export_gguf",
    "export_ggufs",
    "gguf_file_name",
    "gguf_tensor_name",
    "permute_qk",
    "quantize",
    "unpermute_qk",
    "write_f16",
]

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
# llama.cpp's file types (``enum llama_ftype``): f16 is written here, the rest quantized from it.
GGUF_QUANTS: dict[str, int] = {"f16": 1, "q8_0": 7, "q4_k_m": 15}

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# transformers' llama module names → llama.cpp's (llama.cpp ``src/llama-arch.cpp`` LLM_TENSOR_*).
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
# Keys the student's own config decides; every other ``tokenizer.*`` key comes from the base.
_OWN_KEYS = ("tokenizer.chat_template",)


def gguf_tensor_name(hf_name: str) -> str:
    """The GGUF tensor name of a transformers llama parameter (``model.layers.3.mlp.up_proj
    .weight`` → ``blk.3.ffn_up.weight``); an unknown name is an error, never dropped."""
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    m = _LAYER.match(hf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"blk.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    raise ExportError(
        f"tensor {hf_name!r} has no GGUF name for the llama architecture",
        hint="the student has a layer llama.cpp's llama architecture does not know "
        "(biases, extra norms): export it as merged safetensors or vLLM instead",
    )


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k projection reordered from transformers' rotary layout (halves) to
    llama.cpp's (interleaved pairs), per head; ``n_head`` is the kv head count for k."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, dim, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`permute_qk` (what transformers' GGUF loader applies)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_file_name(name: str, quant: str) -> str:
    """``<name>-<quant>.gguf`` with a name safe as a file name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "student"
    return f"{safe}-{quant}.gguf"


@dataclass(frozen=True)
class MergedStudent:
    """A merged student in memory: its weights (name → float32 array), config, tokenizer."""

    tensors: dict[str, Any]
    config: Any
    tokenizer: Any


def _check_quant(quant: str) -> int:
    if quant not in GGUF_QUANTS:
        raise ExportError(
            f"unknown GGUF quantization {quant!r}",
            hint=f"use one of: {', '.join(GGUF_QUANTS)}",
        )
    return GGUF_QUANTS[quant]


def check_architecture(config: Any, where: Path) -> None:
    archs = list(getattr(config, "architectures", None) or [])
    if getattr(config, "model_type", None) != "llama" or not set(archs) <= set(
        SUPPORTED_ARCHITECTURES
    ):
        shown = ", ".join(archs) or str(getattr(config, "model_type", "unknown"))
        raise ExportError(
            f"{where}: GGUF export supports {', '.join(SUPPORTED_ARCHITECTURES)} "
            f"students; this one is {shown}",
            hint="export it as merged safetensors or a vLLM folder (formats: merged, vllm), "
            "or convert it with llama.cpp's convert_hf_to_gguf.py",
        )


def base_gguf_path(base_model: str) -> Path:
    """The GGUF file a student's base model was loaded from (its tokenizer metadata is
    reused); a base given as a safetensors folder or hub name has none."""
    from apidistill.model_loading import resolve_model

    src = resolve_model(base_model)
    if src.gguf_file is None:
        raise ExportError(
            f"base model {base_model!r} is not a GGUF file, and GGUF export copies the "
            "tokenizer metadata from the base model's GGUF",
            hint="train the student on a GGUF base (an embedded model, or a path to a .gguf "
            "of the same base), or pass base_gguf= / --base-gguf with that file",
        )
    return Path(src.folder) / src.gguf_file


def _base_fields(reader: Any) -> Iterator[tuple[str, Any, Any, Any]]:
    """(key, value, type, sub type) of each ``tokenizer.*`` field of the base GGUF."""
    from gguf import GGUFValueType

    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.") or key in _OWN_KEYS:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        yield key, field.contents(), vtype, sub


def _check_vocab(reader: Any, tokenizer: Any, vocab_size: int, base: Path) -> None:
    """The student's tokenizer must be the base GGUF's, id for id: the copied metadata is
    its tokenizer in llama.cpp."""
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    mine = tokenizer.convert_ids_to_tokens(list(range(len(tokens))))
    if len(tokens) != vocab_size or list(mine) != list(tokens):
        diff = next(
            (i for i, (a, b) in enumerate(zip(tokens, mine, strict=False)) if a != b),
            min(len(tokens), vocab_size),
        )
        raise ExportError(
            f"{base}: its tokenizer differs from the student's (vocab {len(tokens)} vs "
            f"{vocab_size}, first difference at id {diff})",
            hint="give the GGUF of the base model the student was trained from",
        )


def _add_architecture(writer: Any, config: Any, name: str) -> None:
    head_dim = getattr(config, "head_dim", None) or (
        config.hidden_size // config.num_attention_heads
    )
    writer.add_name(name)
    writer.add_type("model")
    writer.add_file_type(GGUF_QUANTS["f16"])
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)


def _rope_theta(config: Any) -> float:
    theta = getattr(config, "rope_theta", None)
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    if kind not in (None, "default"):
        raise ExportError(
            f"rope scaling {kind!r} is not written to GGUF by apidistill",
            hint="export it as merged safetensors or a vLLM folder",
        )
    return float(theta if theta is not None else params.get("rope_theta", 10000.0))


def gguf_tensors(student: MergedStudent) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, array) of every weight: q/k rows permuted for llama.cpp, 1-D norms in
    float32, matrices in float16; a tied output matrix is left to llama.cpp to share."""
    import numpy as np

    cfg = student.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    for hf_name, w in student.tensors.items():
        if hf_name == "lm_head.weight" and getattr(cfg, "tie_word_embeddings", False):
            continue
        name = gguf_tensor_name(hf_name)
        if name.endswith("attn_q.weight"):
            w = permute_qk(w, n_head)
        elif name.endswith("attn_k.weight"):
            w = permute_qk(w, n_kv)
        yield name, np.ascontiguousarray(w, dtype=np.float32 if w.ndim == 1 else np.float16)


def write_f16(student: MergedStudent, base: Path, path: Path, name: str) -> Path:
    """Write the student as an f16 GGUF at ``path`` (through a temporary file, so a failed
    write never leaves a file llama.cpp would try to load)."""
    from gguf import GGUFReader, GGUFWriter

    reader = GGUFReader(str(base))
    arch = reader.fields["general.architecture"].contents()
    if arch != "llama":
        raise ExportError(f"{base}: base GGUF architecture is {arch!r}, expected 'llama'")
    _check_vocab(reader, student.tokenizer, student.config.vocab_size, base)
    tmp = path.with_name(path.name + ".tmp")
    writer = GGUFWriter(str(tmp), "llama")
    _add_architecture(writer, student.config, name)
    for key, value, vtype, sub in _base_fields(reader):
        writer.add_key_value(key, value, vtype, sub_type=sub)
    template = student.tokenizer.chat_template
    if template:
        writer.add_chat_template(template)
    for tname, arr in gguf_tensors(student):
        writer.add_tensor(tname, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def quantize(src: Path, dest: Path, quant: str, threads: int | None = None) -> Path:
    """``dest``: llama.cpp's own quantization of the f16 GGUF ``src`` to ``quant``."""
    import os

    try:
        import llama_cpp
    except ImportError:
        raise ExportError(
            f"GGUF {quant} is made by llama.cpp, and llama-cpp-python is not installed",
            hint="pip install llama-cpp-python (it builds llama.cpp from source), or export "
            "f16 only",
        ) from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _check_quant(quant)
    params.nthread = threads or os.cpu_count() or 1
    tmp = dest.with_name(dest.name + ".tmp")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{src}: llama.cpp could not quantize it to {quant} (code {rc})")
    tmp.replace(dest)
    return dest


def load_merged(student_dir: Any, base_model: str | None = None) -> tuple[MergedStudent, str]:
    """The merged student (LoRA folded into its base) and its base model spec, from a
    merged export, an adapter export, a training output folder or a TrainResult."""
    from apidistill.export.student import merged_model, resolve_student, student_tokenizer

    student = resolve_student(student_dir, base_model)
    base = student.need_base()
    cfg_file = student.folder / ("adapter_config.json" if student.is_adapter else "config.json")
    model = merged_model(student)
    check_architecture(model.config, cfg_file)
    tensors = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    return MergedStudent(tensors, model.config, student_tokenizer(student)), base


def export_gguf(
    student_dir: Path | str,
    out_dir: Path | str,
    quant: str = "q8_0",
    *,
    base_model: str | None = None,
    base_gguf: Path | str | None = None,
    name: str | None = None,
    keep_f16: bool = True,
) -> Path:
    """Write ``<out_dir>/<name>-<quant>.gguf`` for the student at ``student_dir`` and
    return its path (the function ``apidistill serve --backend llamacpp`` can call).

    ``student_dir``: a merged export, an adapter export (its ``base_model.txt`` names the
    base) or a training output. ``base_model`` overrides the recorded base, ``base_gguf``
    the GGUF its tokenizer metadata is copied from. Quantized files are made from the f16
    file, kept beside them unless ``keep_f16`` is False.
    """
    return export_ggufs(
        student_dir,
        out_dir,
        [quant],
        base_model=base_model,
        base_gguf=base_gguf,
        name=name,
        keep_f16=keep_f16,
    )[quant]


def export_ggufs(
    student_dir: Path | str,
    out_dir: Path | str,
    quants: list[str],
    *,
    base_model: str | None = None,
    base_gguf: Path | str | None = None,
    name: str | None = None,
    keep_f16: bool = True,
    student: tuple[MergedStudent, str] | None = None,
) -> Mapping[str, Path]:
    """Every quantization in ``quants`` from one merge and one f16 file (quant → path)."""
    for q in quants:
        _check_quant(q)
    merged, base = student or load_merged(student_dir, base_model)
    base_file = Path(base_gguf) if base_gguf is not None else base_gguf_path(base)
    if not base_file.is_file():
        raise ExportError(f"{base_file}: no such GGUF file")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = name or Path(student_dir).resolve().name
    f16 = write_f16(merged, base_file, out / gguf_file_name(name, "f16"), name)
    written = {
        q: f16 if q == "f16" else quantize(f16, out / gguf_file_name(name, q), q) for q in quants
    }
    if not keep_f16 and "f16" not in quants:
        f16.unlink()
    return written
