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
    lightning-post runs clean                                  (mark runs whose process is gone KILLED)
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from typing import Optional

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lightning_post.callbacks.checkpoint import INTERRUPTED, GracefulStop, check_checkpoint_class
from lightning_post.callbacks.export import ExportModel
from lightning_post.callbacks.plots import RunPlots
from lightning_post.callbacks.samples import GenerationSamples
from lightning_post.callbacks.scores import ScoreWriter
from lightning_post.callbacks.test_metrics import TestGenerationMetrics
from lightning_post.outputs import finite_json
from lightning_post.tracking import (
    default_run_name, flatten, git_commit, log_datasets, log_text_artifact, mlflow_logger, model_label, process_tags,
    set_tags,
)

log = logging.getLogger(__name__)


class MLflowConfig(SaveConfigCallback):
    """Record the run on MLflow at setup: the resolved ``config.yaml`` artifact, the flattened config as params,
    tags for method, model and git commit, the data files as dataset inputs (source, digest, rows) and the data
    module's counts as params (``data/train_examples``, ...: constants of the run, not curves)."""

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
            **process_tags(),  # a run whose process is gone is marked KILLED by the next command on the store
            **({"checkpoint_dir": str(trainer.checkpoint_callback.dirpath)}
               if getattr(trainer.checkpoint_callback, "dirpath", None) else {}),
        })
        stats = getattr(trainer.datamodule, "stats", {}) or {}
        metrics = {k: float(v) for split, s in stats.items() for k, v in s.as_metrics(split).items()}
        if hasattr(trainer.datamodule, "setup_metrics"):  # e.g. the quality gate's figures, the task mixture
            metrics.update(trainer.datamodule.setup_metrics())
        report = getattr(trainer.datamodule, "safety_report", None)
        if report:  # the safety filter's counts by reason and a sample of what it removed
            from lightning_post.data.safety import safety_metrics

            metrics.update(safety_metrics(report))
            log_text_artifact(logger, json.dumps(finite_json(report), indent=1, ensure_ascii=False, default=str),
                              "safety_filter/report.json")
        invalid = getattr(trainer.datamodule, "invalid", None)
        if invalid is not None:
            metrics["data/invalid_pairs"] = float(len(invalid))
        if metrics:  # counts fixed at setup: params (a metric would draw a one-point chart of a constant)
            logger.log_hyperparams({k: _param_value(v) for k, v in metrics.items()})
        if hasattr(trainer.datamodule, "data_sources"):
            _log_data_files(logger, trainer.datamodule, getattr(stage, "value", stage))


#: splits a stage does not read
_UNUSED_SPLITS = {"fit": {"test"}, "validate": {"train", "test"}, "test": {"train", "val"}}


def _log_data_files(logger, datamodule, stage: str) -> None:
    """The files of the splits that ``stage`` reads, as the run's MLflow datasets (source, digest, rows)."""
    from lightning_post.data.base import count_records

    sources = [(s, p) for s, p in datamodule.data_sources() if s not in _UNUSED_SPLITS.get(stage, ())]
    counts = {p: count_records(p) for p in {p for _, p in sources}}
    log_datasets(logger.experiment, logger.run_id, [(s, p, counts[p]) for s, p in sources])


def _param_value(value) -> str:
    """A count as ``12`` rather than ``12.0``; other numbers as they are."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


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
        parser.add_lightning_class_args(GracefulStop, "interrupt")
        # the data module tokenises with the model's tokenizer: one value, set once
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer", apply_on="parse")

    def before_instantiate_classes(self) -> None:
        """Default the MLflow experiment to the method name (``sft``, ``dpo``, ...): one experiment per method; and
        a new run's name to ``<method>-<time>-<model>-<suffix>`` (``sft-261203-054512-smollm2-135m-instruct-9f3a``),
        unique whatever the seed. A ``run_name`` from the YAML or the command line is kept."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        logger = config.get("trainer", {}).get("logger")
        model = config.get("model")
        if logger is None or model is None or isinstance(logger, (bool, list)):
            return
        init = logger.get("init_args")
        if init is None:
            return
        method = _method_of(model["class_path"])
        if "experiment_name" in init and not init.get("experiment_name"):
            init["experiment_name"] = method
        if "run_name" in init and not init.get("run_name") and not init.get("run_id"):
            model_name = (model.get("init_args") or {}).get("model_name_or_path")
            init["run_name"] = default_run_name(method, model_label(model_name))

    def _parse_ckpt_path(self) -> None:
        """Before Lightning merges a ``--ckpt_path``'s hyperparameters into the config: refuse a checkpoint that is
        missing, truncated or of another method, in one line and before any run exists."""
        if self.config.get("subcommand"):
            config = self.config[self.config.subcommand]
            path, model = config.get("ckpt_path"), config.get("model")
            if path and path not in ("last", "best", "hpc", "registry") and model is not None:
                init = model.get("init_args") or {}
                check_checkpoint_class(str(path), model.get("class_path", ""), init.get("model_name_or_path"))
        super()._parse_ckpt_path()


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


def _user_error(error: BaseException, kinds: tuple) -> Optional[BaseException]:
    """The first error of ``kinds`` in ``error``'s chain of causes, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kinds):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _fail(command: str, message: str) -> None:
    print(f"lightning-post {command}: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: Optional[list[str]] = None) -> None:
    """``lightning-post <command> ...``: user errors (a bad setting, file, record or output folder) end in one line
    and exit code 2; a fit stopped by Ctrl-C or SIGTERM exits with 130 after saving."""
    from lightning_post.config_files import ConfigFileError, check_yaml_file, config_paths
    from lightning_post.errors import UserError

    argv = sys.argv[1:] if argv is None else list(argv)
    INTERRUPTED.clear()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = argv[0] if argv else ""
    try:
        for path in config_paths(argv):  # YAML syntax named with its file and line, before any parser reads it
            check_yaml_file(path)
        _dispatch(argv)
    except (UserError, ConfigFileError) as e:  # a setting, a file, a record, an output folder
        _fail(command, str(e))
    except ValueError as e:  # jsonargparse wraps a constructor's error into "Does not validate against ..."
        cause = _user_error(e, (UserError,))
        if cause is None:
            raise
        _fail(command, str(cause))
    except SystemExit as e:
        if INTERRUPTED.is_set():  # Lightning exits 1 after a second Ctrl-C: the run was still stopped by the user
            sys.exit(130)
        raise
    if INTERRUPTED.is_set():
        print("lightning-post: stopped by a signal; the checkpoint and the export so far are saved (resume with "
              "--ckpt_path <run folder>/checkpoints/last.ckpt)", file=sys.stderr)
        sys.exit(130)


def _dispatch(argv: list[str]) -> None:
    if argv and argv[0] in COMMANDS:
        from lightning_post.evaluation.commands import run_command

        run_command(argv[0], argv[1:])
        return
    if argv and argv[0] == "runs":
        from lightning_post.tracking import runs_command

        runs_command(argv[1:])
        return
    if argv and argv[0] == "pipeline":
        from lightning_post.evaluation.commands import run_command
        from lightning_post.pipeline import Pipeline, PipelineError

        try:
            run_command("pipeline", argv[1:], {"pipeline": Pipeline}, "lightning-post pipeline")
        except PipelineError as e:
            sys.exit(f"lightning-post pipeline: {e}")
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the stage was stopped and recorded
            print("lightning-post pipeline: interrupted; run the same command again to resume", file=sys.stderr)
            sys.exit(130)
        return
    if argv and argv[0] == "data":
        from lightning_post.evaluation.commands import run_command
        from lightning_post.quality.commands import DATA_COMMANDS

        if len(argv) < 2 or argv[1] not in DATA_COMMANDS:
            sys.exit(f"usage: lightning-post data {{{','.join(DATA_COMMANDS)}}} [--config FILE] [--help]")
        run_command(argv[1], argv[2:], DATA_COMMANDS)
        return
    cli_main(argv)


if __name__ == "__main__":
    main()
