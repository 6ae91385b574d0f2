"""The training commands (``fit``, ``validate``, ``test``, ``predict``): LightningCLI with our callbacks, the MLflow
record of each run (config, params, tags, datasets) and run names; :mod:`lightning_post.cli` dispatches to it.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lightning_post.callbacks.checkpoint import GracefulStop, check_checkpoint_class
from lightning_post.callbacks.export import ExportModel
from lightning_post.callbacks.plots import RunPlots
from lightning_post.callbacks.samples import GenerationSamples
from lightning_post.callbacks.scores import ScoreWriter
from lightning_post.callbacks.test_metrics import TestGenerationMetrics
from lightning_post.data.base import PostDataModule
from lightning_post.help import OneLineErrors
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
        if isinstance(trainer.datamodule, PostDataModule):  # what a data module adds to the run, as it declares it
            record = trainer.datamodule.run_record(getattr(stage, "value", stage))
            for path, text in record.artifacts.items():  # the safety filter's report
                log_text_artifact(logger, text, path)
            if record.params:  # counts fixed at setup: params (a metric would draw a one-point chart of a constant)
                logger.log_hyperparams({k: _param_value(v) for k, v in record.params.items()})
            log_datasets(logger.experiment, logger.run_id, record.datasets)  # the files the stage reads


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


class TrainerParser(OneLineErrors, LightningArgumentParser):
    """The parser of ``lightning-post fit|validate|test|predict``: a bad setting is one line, as in every command."""


def _no_advert(record: logging.LogRecord) -> bool:
    """Drop Lightning's advertisement for its cloud logger, printed on every run that does not use it."""
    return not str(record.msg).startswith("💡 Tip:")


def cli_main(args=None, run: bool = True) -> PostCLI:
    """Build (and by default run) the CLI; ``args`` as a list, like ``sys.argv[1:]``."""
    import lightning_post
    from lightning_post.help import PlainHelpFormatter

    for name in lightning_post.__all__:  # the methods and data modules, listed as known subclasses in --help
        getattr(lightning_post, name)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning_utilities.core.rank_zero"):
        if _no_advert not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_no_advert)
    # we pass the arguments ourselves (the front command line took the command name and --debug off them)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    plain = {"formatter_class": PlainHelpFormatter}
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
        parser_class=TrainerParser,
        parser_kwargs={**plain, "prog": "lightning-post", **{c: dict(plain) for c in ("fit", "validate", "test",
                                                                                     "predict")}},
        args=args,
        run=run,
    )
