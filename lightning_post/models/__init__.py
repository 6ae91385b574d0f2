"""Model loading, aliases and parameter-efficient fine-tuning."""

from lightning_post.models.loading import MODEL_ALIASES, load_causal_lm, load_tokenizer, resolve_model_path

__all__ = ["MODEL_ALIASES", "load_causal_lm", "load_tokenizer", "resolve_model_path"]
