"""``lightning-post pipeline``: post-training stages run in order as one experiment, each a child process and a
child MLflow run, resumable (the machinery: :mod:`lightning_post.pipeline`).

    lightning-post pipeline --config configs/pipeline/default.yaml
"""

from __future__ import annotations

import sys
from typing import Optional

from lightning_post.commands.base import Command
from lightning_post.pipeline import PipelineError, Stage, StageRunner
from lightning_post.tracking import DEFAULT_ARTIFACTS, DEFAULT_TRACKING_URI


class Pipeline(StageRunner, Command):
    """Run post-training stages in order (sft -> reward -> dpo or ppo -> cai -> evaluate -> abtest, or any order
    the YAML gives), each stage's export feeding the next, as one MLflow parent run with a child run per stage;
    a rerun resumes at the first stage not done."""

    def __init__(
        self,
        stages: list[Stage],
        name: str = "pipeline",
        output_dir: str = "mlruns/pipelines/default",
        tracking_uri: str = DEFAULT_TRACKING_URI,
        artifact_location: str = DEFAULT_ARTIFACTS,
        experiment_name: str = "pipeline",
        restart_from: Optional[str] = None,
        stop_after: Optional[str] = None,
        python: Optional[str] = None,
    ):
        """
        Args:
            stages: the stages, run in this order (see :class:`~lightning_post.pipeline.Stage`).
            name: the parent run's name.
            output_dir: the pipeline's folder: ``state.json``, and per stage its export, outputs and ``stage.log``.
                Reruns with the same folder resume.
            tracking_uri: MLflow tracking URI of the parent and child runs.
            artifact_location: artifact root of the experiment when it is created.
            experiment_name: MLflow experiment of the parent and child runs.
            restart_from: rerun this stage and every stage after it even when done.
            stop_after: stop (successfully) after this stage.
            python: interpreter of the stage processes (``null`` = this one).
        """
        self.keep(locals())
        self.stages = [s if isinstance(s, Stage) else Stage(**s) for s in stages]
        self._validate()

    def run(self) -> dict:
        """Run (or resume) the pipeline; returns the state: per stage its status, run id, outputs and seconds."""
        return self.run_stages()

    @classmethod
    def main(cls, argv: list[str], prog: str) -> dict:
        """A failed stage or a wrong description ends in one line (exit code 1); Ctrl-C or SIGTERM, after the
        running stage was stopped and recorded, in exit code 130."""
        try:
            return super().main(argv, prog)
        except PipelineError as e:
            sys.exit(f"{prog}: {e}")
        except KeyboardInterrupt:
            print(f"{prog}: interrupted; run the same command again to resume", file=sys.stderr)
            sys.exit(130)
