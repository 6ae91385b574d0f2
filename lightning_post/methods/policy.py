"""A trained policy for the commands that generate with it (evaluate, abtest, red team, serving): from an alias, an
export folder, a hub id, or a Lightning checkpoint of any of our causal methods."""

from __future__ import annotations

from typing import Optional


def load_policy(path: str, dtype: str = "float32", device: Optional[str] = None):
    """``(model, tokenizer)`` of an alias, export folder, hub id, or a Lightning checkpoint (``.ckpt``) of any of
    our causal methods (its policy weights, LoRA adapters included, on the base it names)."""
    from lightning_post.models.loading import load_causal_lm, load_tokenizer

    if str(path).endswith(".ckpt"):
        from lightning_post.methods.sft import SFTModule

        from lightning_post.models.loading import read_checkpoint

        ckpt = read_checkpoint(str(path), "model")  # a missing or truncated file is named in one line
        hp = ckpt["hyper_parameters"]
        module = SFTModule(model_name_or_path=hp["model_name_or_path"], dtype=dtype,
                           attn_implementation=hp.get("attn_implementation", "sdpa"), peft=hp.get("peft"))
        module.configure_model()
        policy = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        missing = module.load_state_dict(policy, strict=False)
        if missing.unexpected_keys:
            raise ValueError(f"{path}: weights that do not fit the policy: {missing.unexpected_keys[:3]}")
        model = module.model.merge_and_unload() if hasattr(module.model, "merge_and_unload") else module.model
        tokenizer = module.tokenizer
    else:
        model, tokenizer = load_causal_lm(path, dtype, "sdpa"), load_tokenizer(path)
    return model.eval().requires_grad_(False).to(device or "cpu"), tokenizer
