"""``lightning-post``: LightningCLI for every method (``fit``, ``validate``, ``test``, ``predict``).

    lightning-post fit --config configs/sft.yaml
    lightning-post fit --config configs/sft.yaml --config configs/strategies/ddp.yaml
    lightning-post test --config configs/sft.yaml --ckpt_path mlruns/runs/<exp>/<run>/checkpoints/last.ckpt
    lightning-post evaluate --config configs/evaluate.yaml --model exports/sft/model
    lightning-post abtest --config configs/abtest.yaml --model_a smollm2-135m-instruct --model_b exports/dpo/model
    lightning-post redteam --config configs/redteam.yaml         (attacks, their success rate, the red-team set)
    lightning-post jailbreak-data --config configs/jailbreak_data.yaml   (refusal SFT records and DPO pairs)
    lightning-post pipeline --config configs/pipeline.yaml     (sft -> reward -> dpo -> cai -> evaluate -> abtest)
    lightning-post data report --annotations judged.jsonl --output_dir reports/judged   (pairs|label|report|convert)
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lightning_post.callbacks.export import ExportModel
from lightning_post.callbacks.plots import RunPlots
from lightning_post.callbacks.samples import GenerationSamples
from lightning_post.callbacks.scores import ScoreWriter
from lightning_post.callbacks.test_metrics import TestGenerationMetrics
from lightning_post.tracking import flatten, git_commit, log_text_artifact, mlflow_logger, set_tags

log = logging.getLogger(__name__)


class MLflowConfig(SaveConfigCallback):
    """Record the run on MLflow at setup: the resolved ``config.yaml`` artifact, the flattened config as params,
    tags for method, model and git commit, and the data module's example counts."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        logger = mlflow_logger(trainer)
        if logger is None:
            return
        text = self.parser.dump(self.config, skip_none=False)
        log_text_artifact(logger, text, "config.yaml")
        params = {k: v for k, v in flatten(self.config.as_dict()).items() if not k.startswith("config")}
        logger.log_hyperparams(params)
        set_tags(logger, {
            "method": getattr(pl_module, "method", type(pl_module).__name__),
            "model": getattr(pl_module.hparams, "model_name_or_path", "unknown"),
            "git_commit": git_commit(),
            "stage": getattr(stage, "value", stage),
        })
        stats = getattr(trainer.datamodule, "stats", {}) or {}
        metrics = {k: float(v) for split, s in stats.items() for k, v in s.as_metrics(split).items()}
        if hasattr(trainer.datamodule, "setup_metrics"):  # e.g. the quality gate's figures, the task mixture
            metrics.update(trainer.datamodule.setup_metrics())
        report = getattr(trainer.datamodule, "safety_report", None)
        if report:  # the safety filter's counts by reason and a sample of what it removed
            from lightning_post.data.safety import safety_metrics

            metrics.update(safety_metrics(report))
            log_text_artifact(logger, json.dumps(report, indent=1, ensure_ascii=False, default=str),
                              "safety_filter/report.json")
        invalid = getattr(trainer.datamodule, "invalid", None)
        if invalid is not None:
            metrics["data/invalid_pairs"] = float(len(invalid))
        if metrics:
            logger.log_metrics(metrics, step=0)


def _method_of(class_path: str) -> str:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(getattr(importlib.import_module(module), name), "method", name.lower())
    except (ImportError, AttributeError):
        return name.lower()


class PostCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(GenerationSamples, "samples")
        parser.add_lightning_class_args(ExportModel, "export")
        parser.add_lightning_class_args(RunPlots, "plots")
        parser.add_lightning_class_args(ScoreWriter, "scores")
        parser.add_lightning_class_args(TestGenerationMetrics, "test_metrics")
        # the data module tokenises with the model's tokenizer: one value, set once
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer", apply_on="parse")

    def before_instantiate_classes(self) -> None:
        """Default the MLflow experiment to the method name (``sft``, ``dpo``, ...): one experiment per method."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        logger = config.get("trainer", {}).get("logger")
        model = config.get("model")
        if logger is None or model is None or isinstance(logger, (bool, list)):
            return
        init = logger.get("init_args")
        if init is not None and "experiment_name" in init and not init.get("experiment_name"):
            init["experiment_name"] = _method_of(model["class_path"])


TRAINER_DEFAULTS = {
    "logger": {"class_path": "lightning_post.tracking.MLflowLogger"},
    "default_root_dir": "mlruns/runs",
    "log_every_n_steps": 1,
}


def cli_main(args=None, run: bool = True) -> PostCLI:
    """Build (and by default run) the CLI; ``args`` as a list, like ``sys.argv[1:]``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return PostCLI(
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=MLflowConfig,
        save_config_kwargs={"save_to_log_dir": False, "overwrite": True},
        trainer_defaults=TRAINER_DEFAULTS,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


#: subcommands beside LightningCLI's fit/validate/test/predict
COMMANDS = ("evaluate", "abtest", "redteam", "jailbreak-data")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        from lightning_post.evaluation.commands import run_command

        run_command(sys.argv[1], sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "pipeline":
        from lightning_post.evaluation.commands import run_command
        from lightning_post.pipeline import Pipeline, PipelineError

        try:
            run_command("pipeline", sys.argv[2:], {"pipeline": Pipeline}, "lightning-post pipeline")
        except PipelineError as e:
            sys.exit(f"lightning-post pipeline: {e}")
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the stage was stopped and recorded
            print("lightning-post pipeline: interrupted; run the same command again to resume", file=sys.stderr)
            sys.exit(130)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "data":
        from lightning_post.evaluation.commands import run_command
        from lightning_post.quality.commands import DATA_COMMANDS

        if len(sys.argv) < 3 or sys.argv[2] not in DATA_COMMANDS:
            sys.exit(f"usage: lightning-post data {{{','.join(DATA_COMMANDS)}}} [--config FILE] [--help]")
        run_command(sys.argv[2], sys.argv[3:], DATA_COMMANDS)
        return
    cli_main()  # LightningCLI reads sys.argv itself


if __name__ == "__main__":
    main()
