"""Which MLflow flavour to log a merged chat model with: our ``pyfunc`` model with the package's code
(``lightning_post.serving``), or MLflow's ``transformers`` flavour. Measures, on the same merged model folder, the
logged size on disk, the time ``mlflow.pyfunc.load_model`` takes (alternating, ``--repeats`` each), and one greedy
answer from each, and writes ``benchmarks/serving/results/serving_flavours.json`` and ``benchmarks/serving/SERVING.md``.

    .venv/bin/python benchmarks/serving/serving_flavours.py                     # the default model (SmolLM2-135M-Instruct)
    .venv/bin/python benchmarks/serving/serving_flavours.py --model tiny-llama  # seconds, for a smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt", default="What is the capital of France?")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import mlflow
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lightning_post.models.loading import resolve_model_path
    from lightning_post.serving import log_exported_model

    folder = resolve_model_path(args.model)  # a merged export has the same layout: config, weights, tokenizer
    work = Path(tempfile.mkdtemp(prefix="flavours-"))
    uri = f"sqlite:///{work}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("flavours"))
    ids = {"pyfunc+code": log_exported_model(uri, run.info.run_id, {"model": folder}, args.model, "chat",
                                             {"max_new_tokens": 32})}
    with mlflow.start_run(run_id=run.info.run_id):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(folder)
        # given requirements: MLflow's own inference adds torchvision for any torch model and fails without it
        # (torchvision from PyPI does not import beside the CPU torch build used here)
        from lightning_post.serving import serving_requirements

        info = mlflow.transformers.log_model({"model": model, "tokenizer": tok}, name="hf", task="text-generation",
                                             model_config={"max_new_tokens": 32, "do_sample": False},
                                             pip_requirements=serving_requirements())
        ids["transformers"] = info.model_id
    sizes, local = {}, {}
    for name, model_id in ids.items():
        local[name] = Path(mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(work / name)))
        sizes[name] = folder_size(local[name])
    seconds: dict[str, list[float]] = {name: [] for name in ids}
    answers = {}
    for _ in range(args.repeats):  # alternating, so both see the same machine load
        for name in ids:
            start = time.perf_counter()
            loaded = mlflow.pyfunc.load_model(str(local[name]))
            seconds[name].append(time.perf_counter() - start)
            answers[name] = loaded.predict([args.prompt])
    result = {
        "model": args.model, "machine": f"{platform.machine()}, {torch.get_num_threads()} CPU threads, torch "
                                        f"{torch.__version__}, mlflow {mlflow.__version__}",
        "bytes": sizes, "load_seconds": seconds, "answers": {k: str(v)[:300] for k, v in answers.items()},
        "command": f"python benchmarks/serving/serving_flavours.py --model {args.model} --repeats {args.repeats}",
    }
    out = ROOT / "benchmarks" / "serving" / "results" / "serving_flavours.json"
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
