"""Load a decoder and its tokenizer: a local HF folder, a GGUF file, `random:<name>`, or the bundled default.

Every model is loaded with the runtime's attention (attention/hooks.py) and no copied modeling code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..attention.hooks import keep_attention_on, register
from ..config import ConfigError
from .bundled import BUNDLED_NAME, bundled_model_dir, bundled_tokenizer_dir, converted_gguf_dir
from .random_configs import RANDOM_CONFIGS, random_config

RANDOM_PREFIX = "random:"
RANDOM_SEED = 1234


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from once resolved: ``kind`` is hf | random; ``path`` an HF folder or random name."""

    kind: str
    path: str
    name: str
    tokenizer_path: str


def resolve_model(spec: str | None) -> ModelSource:
    """Turn a --model_path value into a loadable source, converting GGUF files once (cached)."""
    if spec in (None, "", "bundled"):
        d = bundled_model_dir()
        return ModelSource("hf", str(d), BUNDLED_NAME, str(d))
    if spec.startswith(RANDOM_PREFIX):
        name = spec[len(RANDOM_PREFIX):]
        if name not in RANDOM_CONFIGS:
            raise ConfigError(
                f"unknown random model {spec!r}; choose one of: "
                + ", ".join(RANDOM_PREFIX + n for n in sorted(RANDOM_CONFIGS))
            )
        return ModelSource("random", name, spec, "")  # tokenizer: the bundled one, resolved when needed
    p = Path(spec).expanduser()
    if not p.exists():
        raise ConfigError(f"--model_path {spec} does not exist; give an HF model folder, a .gguf file, "
                          "random:<name>, or leave it out for the bundled SmolLM2")
    if p.is_file() and p.suffix == ".gguf":
        with open(p, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ConfigError(f"--model_path {spec} is not a GGUF file (it does not start with the GGUF magic); "
                              "give a .gguf model file or an HF model folder")
        try:
            d = converted_gguf_dir(p)
        except Exception as e:
            raise ConfigError(f"--model_path {spec}: the GGUF file cannot be read ({_first_line(e)}); it may be "
                              "truncated or of an architecture transformers cannot load; replace it") from None
        return ModelSource("hf", str(d), p.stem, str(d))
    if p.is_dir() and (p / "config.json").exists():
        if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
            raise ConfigError(f"--model_path {spec} has a config.json but no weights (*.safetensors or *.bin); "
                              "give the folder holding the model's weight files")
        return ModelSource("hf", str(p), p.name, str(p))
    raise ConfigError(f"--model_path {spec} is neither an HF model folder (with config.json) nor a .gguf file")


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:160]


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    path = source.tokenizer_path or str(bundled_tokenizer_dir())
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise ConfigError(f"--model_path {path}: its tokenizer cannot be loaded ({_first_line(e)}); the folder "
                          "needs the model's tokenizer files (tokenizer.json or tokenizer.model)") from None


def model_config(source: ModelSource):
    from transformers import AutoConfig

    if source.kind == "random":
        return random_config(source.path)
    try:
        return AutoConfig.from_pretrained(source.path)
    except Exception as e:
        raise ConfigError(f"--model_path {source.path}: its config.json cannot be used ({_first_line(e)}); "
                          "fix or replace config.json") from None


def check_supported(config) -> None:
    """Refuse what the exact runtime cannot do, with one line saying so."""
    text = text_config(config)
    window = getattr(text, "sliding_window", None)
    if window and getattr(text, "use_sliding_window", True) and window < text.max_position_embeddings:
        raise ConfigError(f"{text.model_type}: sliding-window attention ({window}) is not supported; "
                          "use a model with full attention in every layer")
    if getattr(text, "attn_logit_softcapping", None):
        raise ConfigError(f"{text.model_type}: attention logit soft-capping is not supported")


def load_model(source: ModelSource, dtype: torch.dtype, device: torch.device,
               devices: list[torch.device] | None = None):
    """Return the model in eval mode on ``device`` using the runtime attention.

    devices (several): the decoder layers' weights are split over them in order, in equal runs (a model too
    big for one GPU); embeddings, final norm, rotary embedding and LM head stay on the first, and so does
    every layer's attention with its KV (attention/hooks.py keep_attention_on).
    """
    from transformers import AutoModelForCausalLM

    name = register()
    config = model_config(source)
    check_supported(config)
    split = devices is not None and len(devices) > 1
    if source.kind == "random":
        # seeded, drawn on the GPU (on the CPU for a split worker: the two placements draw different weights;
        # every worker of one run uses the same placement, so they all hold the same model)
        torch.manual_seed(RANDOM_SEED)
        with torch.device("cpu" if split else device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=name)
    else:
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, attn_implementation=name)
    if split:
        from accelerate import dispatch_model

        model = dispatch_model(model, device_map=layer_device_map(model, devices))
        keep_attention_on(model, devices[0])
    else:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def layer_device_map(model, devices: list[torch.device]) -> dict[str, str]:
    """{module name: device} with the decoder layers in len(devices) consecutive runs (earlier devices take
    the extra layers, as torch.tensor_split) and every other module on devices[0]."""
    decoder = model.get_decoder()
    prefix = next(n for n, m in model.named_modules() if m is decoder)
    layers = decoder.layers
    runs = torch.tensor_split(torch.arange(len(layers)), len(devices))
    where = {int(i): str(devices[d]) for d, run in enumerate(runs) for i in run}
    dmap = {}
    for n, _ in model.named_children():
        if n != prefix.split(".")[0]:
            dmap[n] = str(devices[0])
    for n, _ in decoder.named_children():
        if n != "layers":
            dmap[f"{prefix}.{n}" if prefix else n] = str(devices[0])
    for i in range(len(layers)):
        dmap[f"{prefix}.layers.{i}" if prefix else f"layers.{i}"] = where[i]
    return dmap


def text_config(config):
    """The decoder's own config (multimodal configs nest it)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def head_dim(config) -> int:
    """The attention head size of a (text) config (most configs derive it from the hidden size)."""
    cfg = text_config(config)
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def num_layers(model) -> int:
    return model_shape(model.config)[0]


_SHAPES: dict = {}


def model_shape(config) -> tuple[int, int, int]:
    """(decoder layers, KV heads, head dim) of a config, read once per config object: its attribute reads cost
    tens of microseconds in transformers 5, and every request's arena and shard ask for them."""
    hit = _SHAPES.get(id(config))
    if hit is not None and hit[0] is config:
        return hit[1]
    text = text_config(config)
    shape = (int(text.num_hidden_layers), int(text.num_key_value_heads), int(head_dim(config)))
    if len(_SHAPES) > 64:
        _SHAPES.clear()
    _SHAPES[id(config)] = (config, shape)
    return shape


def model_window(config) -> int:
    return int(text_config(config).max_position_embeddings)
