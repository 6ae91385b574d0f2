"""``lightning-post pipeline``: post-training stages run in order as one experiment.

    lightning-post pipeline --config configs/pipeline/default.yaml

Each stage is one of the project's commands (``fit`` of any method, ``evaluate``, ``abtest``) with its own YAML, run
in a child process so that a crash, an out-of-memory kill or Ctrl-C in one stage leaves the pipeline's record
consistent. A stage's ``inputs`` name earlier stages; their outputs (an export folder, a report) are passed as
arguments, so each stage's export feeds the next.

MLflow: one parent run (experiment ``pipeline`` by default) and a child run per stage (tag ``mlflow.parentRunId``), so
the MLflow UI nests the stages under the pipeline. Each child run carries its lineage (``lineage.<argument>`` =
``<stage> <run id> <path>``), and the parent holds ``lineage.json`` and the final metrics of every stage
(``<stage>/<metric>``).

Resume: ``<output_dir>/state.json`` records each finished stage with a fingerprint of its settings (its YAML's text,
its arguments and the runs it read from). A rerun of the same command skips the stages already done with the same
fingerprint and starts at the first that is not: the failed one, or one whose settings changed (and then everything
after it that reads from it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

from lightning_post.errors import OutputError
from lightning_post.outputs import child_dir, refuse_protected

log = logging.getLogger(__name__)

#: what a stage can run; fit stages accept every method's YAML
STAGE_COMMANDS = ("fit", "evaluate", "abtest", "redteam", "jailbreak-data")
#: the output a bare stage name refers to in ``inputs``
DEFAULT_OUTPUT = {"fit": "model", "evaluate": "report", "abtest": "report", "redteam": "redteam_set",
                  "jailbreak-data": "pairs"}


def _stop_with_parent() -> None:
    """In a stage's process, before it starts: ask the kernel for SIGTERM when the pipeline process dies."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl (not Linux): the stage then outlives a killed pipeline
        return


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class PipelineError(RuntimeError):
    """A stage failed or the pipeline's description is wrong; the message says which stage and what to do."""


@dataclass
class Stage:
    """One step of the pipeline.

    Attributes:
        name: unique name, also the child run's name and the stage's folder under ``output_dir``.
        command: ``fit`` (any method's YAML), ``evaluate``, ``abtest``, ``redteam`` or ``jailbreak-data``.
        config: the stage's YAML (as given to ``lightning-post <command> --config``), or a list of them applied in
            order (a base config and an overlay: ``[configs/sft/default.yaml, configs/sft/jailbreak.yaml]``).
        args: overrides of that YAML, dotted keys as on the command line (``trainer.max_steps: 5``); the text
            ``{stage_dir}`` in a string value becomes the stage's folder.
        inputs: argument -> earlier stage (``model.init_args.model_name_or_path: sft``); ``stage:output`` picks an
            output other than the default (fit: ``model``, the export with adapters merged, else the adapter;
            ``adapter``; ``checkpoint``; other commands: ``output_dir`` and each file they write, by its stem:
            ``report``, ``redteam_set``, ``sft``, ``pairs``, ``heldout_harmful``, ...).
    """

    name: str
    command: str = "fit"
    config: Union[str, list[str], None] = None
    args: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)

    @property
    def configs(self) -> list[str]:
        return [] if self.config is None else [self.config] if isinstance(self.config, str) else list(self.config)


def _cli_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fit_outputs(stage_dir: Path) -> dict[str, str]:
    """Outputs of a finished fit stage: ``model`` (merged export, or the adapter where nothing merges), ``adapter``,
    ``export`` and ``checkpoint`` (the last one, when the YAML keeps checkpoints)."""
    export = stage_dir / "export"
    out = {"export": str(export.resolve())}
    for name in ("model", "adapter"):
        if (export / name).is_dir():
            out[name] = str((export / name).resolve())
    if "model" not in out and "adapter" in out:
        out["model"] = out["adapter"]
    ckpts = sorted((p for p in stage_dir.rglob("*.ckpt") if export not in p.parents), key=lambda p: p.stat().st_mtime)
    if ckpts:
        out["checkpoint"] = str(ckpts[-1].resolve())
    return out


def parent_metric_key(st: Stage, key: str) -> str:
    """A stage's metric on the parent run: ``<stage>/<metric>``, the stage named once: a metric already under the
    stage's name or its command's (``redteam/attack_success_rate`` of a stage ``redteam``) is not prefixed again.

    >>> parent_metric_key(Stage("redteam", "redteam"), "redteam/asr/roleplay")
    'redteam/asr/roleplay'
    >>> parent_metric_key(Stage("attack", "redteam"), "redteam/attack_success_rate")
    'attack/attack_success_rate'
    >>> parent_metric_key(Stage("sft"), "train/loss")
    'sft/train/loss'
    """
    head, _, rest = key.partition("/")
    if rest and head in (st.name, st.command.replace("-", "_")):
        key = rest
    return f"{st.name}/{key}"


class StageRunner:
    """The machinery of ``lightning-post pipeline`` (:class:`lightning_post.commands.pipeline.Pipeline`, whose
    settings it reads: ``stages``, ``name``, ``output_dir``, ``tracking_uri``, ``artifact_location``,
    ``experiment_name``, ``restart_from``, ``stop_after``, ``python``): the description checked before anything runs,
    the state file, the parent and child MLflow runs, one process per stage, the resume."""

    # ---------------------------------------------------------------- description checks, before anything runs
    def _validate(self) -> None:
        if not self.stages:
            raise PipelineError("the pipeline has no stages")
        try:
            refuse_protected(Path(self.output_dir), "output_dir")
        except OutputError as e:
            raise PipelineError(str(e)) from None
        seen: dict[str, Stage] = {}
        for i, st in enumerate(self.stages):
            where = f"stages[{i}] ({st.name!r})"
            try:  # the name is a folder under output_dir: '..' or 'a/b' would write outside it
                child_dir(self.output_dir, st.name, f"{where}: name")
            except OutputError as e:
                raise PipelineError(str(e)) from None
            if st.name in seen:
                raise PipelineError(f"{where}: name must be unique")
            if st.command not in STAGE_COMMANDS:
                raise PipelineError(f"{where}: command must be one of {STAGE_COMMANDS}, got {st.command!r}")
            for config in st.configs:
                if not Path(config).is_file():
                    raise PipelineError(f"{where}: config file {config} does not exist")
            for arg, ref in st.inputs.items():
                source = ref.split(":")[0]
                if source not in seen:
                    raise PipelineError(f"{where}: input {arg} refers to {source!r}, which is not an earlier stage")
            seen[st.name] = st
        for knob in ("restart_from", "stop_after"):
            if getattr(self, knob) is not None and getattr(self, knob) not in seen:
                raise PipelineError(f"{knob}: no stage named {getattr(self, knob)!r}")

    # ---------------------------------------------------------------- state
    @property
    def _state_file(self) -> Path:
        return Path(self.output_dir) / "state.json"

    def _load_state(self) -> dict:
        if not self._state_file.exists():
            return {"parent_run_id": None, "stages": {}}
        try:
            state = json.loads(self._state_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            state, problem = None, str(e)
        else:
            problem = "not a pipeline state (no 'stages' object)"
        if not isinstance(state, dict) or not isinstance(state.get("stages"), dict):
            raise PipelineError(f"{self._state_file}: corrupt ({problem}); restore it, or delete it to run every "
                                "stage again")
        return state

    def _save_state(self, state: dict) -> None:
        tmp = self._state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
        os.replace(tmp, self._state_file)  # atomic: a kill never leaves half a state

    # ---------------------------------------------------------------- MLflow
    def _client(self):
        import mlflow

        from lightning_post.tracking import absolute_uri

        # the store of the working folder: MLflow keeps one store per URI string for the life of the process, so a
        # relative SQLite URI would reach the first folder's store after a chdir (a second pipeline in one process)
        uri = absolute_uri(self.tracking_uri)
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return mlflow.MlflowClient(tracking_uri=uri)

    def _experiment_id(self, client) -> str:
        exp = client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return exp.experiment_id
        location = self.artifact_location
        if "://" not in location:
            location = Path(location).resolve().as_uri()
        return client.create_experiment(self.experiment_name, artifact_location=location)

    def _parent_run(self, client, state: dict) -> str:
        from lightning_post.tracking import git_commit, process_tags

        run_id = state.get("parent_run_id")
        if run_id:
            try:
                run = client.get_run(run_id)
                client.update_run(run_id, status="RUNNING")
                for key, value in process_tags().items():  # this process holds the run now
                    client.set_tag(run_id, key, value)
                resumes = int(run.data.tags.get("pipeline.resumes", "0")) + 1
                client.set_tag(run_id, "pipeline.resumes", str(resumes))
                return run_id
            except Exception:  # the store was replaced: start a new parent
                log.warning("parent run %s is not in %s: starting a new one", run_id, self.tracking_uri)
        run = client.create_run(self._experiment_id(client), run_name=self.name, tags={
            "method": "pipeline", "pipeline.name": self.name, "pipeline.output_dir": str(Path(self.output_dir).resolve()),
            "pipeline.stages": " -> ".join(s.name for s in self.stages), "git_commit": git_commit(),
            **process_tags()})
        for st in self.stages:
            client.log_param(run.info.run_id, f"stage.{st.name}", " ".join([st.command, *st.configs])[:500])
        return run.info.run_id

    # ---------------------------------------------------------------- one stage
    def _resolve_inputs(self, st: Stage, state: dict) -> dict[str, dict]:
        """argument -> {"stage", "output", "path", "run_id"} of the earlier stage it reads."""
        kinds = {s.name: s.command for s in self.stages}
        out = {}
        for arg, ref in st.inputs.items():
            source, _, output = ref.partition(":")
            output = output or DEFAULT_OUTPUT[kinds[source]]
            done = state["stages"].get(source, {})
            if done.get("status") != "done":
                raise PipelineError(f"stage {st.name}: input {arg} needs stage {source}, which is not done")
            if output not in done["outputs"]:
                raise PipelineError(f"stage {st.name}: stage {source} has no output {output!r} "
                                    f"(it has {sorted(done['outputs'])})")
            out[arg] = {"stage": source, "output": output, "path": done["outputs"][output], "run_id": done["run_id"]}
        return out

    def _fingerprint(self, st: Stage, inputs: dict[str, dict]) -> str:
        text = "\n".join(Path(config).read_text(encoding="utf-8") for config in st.configs)
        spec = {"stage": asdict(st), "config_text": _sha(text),
                "inputs": {k: [v["run_id"], v["path"]] for k, v in inputs.items()}}
        return _sha(json.dumps(spec, sort_keys=True, default=str))

    def _argv(self, st: Stage, stage_dir: Path, run_id: str, inputs: dict[str, dict]) -> list[str]:
        python = self.python or sys.executable
        argv = [python, "-m", "lightning_post.cli", st.command]
        for config in st.configs:
            argv += ["--config", config]
        if st.command == "fit":
            argv += [f"--trainer.logger.init_args.tracking_uri={self.tracking_uri}",
                     f"--trainer.logger.init_args.run_id={run_id}",
                     f"--trainer.default_root_dir={stage_dir}",
                     f"--export.dirpath={stage_dir / 'export'}"]
        else:
            argv += [f"--tracking_uri={self.tracking_uri}", f"--run_id={run_id}",
                     f"--output_dir={stage_dir / 'output'}"]
        for key, value in st.args.items():
            if isinstance(value, str):
                value = value.replace("{stage_dir}", str(stage_dir))
            argv.append(f"--{key}={_cli_value(value)}")
        argv += [f"--{arg}={v['path']}" for arg, v in inputs.items()]
        return argv

    def _run_process(self, argv: list[str], log_file: Path) -> int:
        """Run a stage's process, its output both on the console and in ``stage.log``.

        The process writes ``stage.log`` itself and the pipeline follows the file to the console, so its output
        reaches the log even when the pipeline is gone; when the pipeline dies (even by ``kill -9``) the stage gets
        SIGTERM (Linux ``PR_SET_PDEATHSIG``) and stops like on Ctrl-C, with a checkpoint, instead of running on
        orphaned.
        """
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log_file, "ab") as sink:
            sink.write(f"$ {shlex.join(argv)}\n".encode())
            sink.flush()
            start = sink.tell()
            proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=_stop_with_parent if sys.platform.startswith("linux") else None)
        with open(log_file, "rb") as follow:
            follow.seek(start)
            try:
                while True:
                    chunk = follow.read(65536)
                    if chunk:
                        sys.stdout.buffer.write(chunk)
                        sys.stdout.flush()
                    elif proc.poll() is not None:
                        rest = follow.read()
                        sys.stdout.buffer.write(rest)
                        sys.stdout.flush()
                        return proc.returncode
                    else:
                        time.sleep(0.1)
            except BaseException:  # Ctrl-C or a kill of the pipeline: stop the stage too
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise

    def _outputs(self, st: Stage, stage_dir: Path) -> dict[str, str]:
        if st.command == "fit":
            out = fit_outputs(stage_dir)
            if "model" not in out:
                raise PipelineError(f"stage {st.name} finished without an export in {stage_dir / 'export'} "
                                    "(is export.enabled false in its YAML?)")
            return out
        folder = (stage_dir / "output").resolve()  # every file the command wrote is an output, by its stem
        return {"output_dir": str(folder), **{p.stem: str(p) for p in sorted(folder.glob("*.json*"))}}

    # ---------------------------------------------------------------- the whole pipeline
    def run_stages(self) -> dict:
        """Run (or resume) the pipeline; returns the state: per stage its status, run id, outputs and seconds."""
        Path(self.output_dir).mkdir(parents=True, exist_ok=True)
        state = self._load_state()
        client = self._client()
        parent = self._parent_run(client, state)
        state["parent_run_id"] = parent
        self._save_state(state)
        restart = False
        dirty: set[str] = set()  # stages rerun in this call: whatever reads from them reruns too
        total = len(self.stages)
        # a scheduler's SIGTERM (preemption, scancel) stops the running stage like Ctrl-C, with the state recorded
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) \
            if threading.current_thread() is threading.main_thread() else None
        try:
            for i, st in enumerate(self.stages, 1):
                restart = restart or st.name == self.restart_from
                inputs = self._resolve_inputs(st, state)
                fingerprint = self._fingerprint(st, inputs)
                done = state["stages"].get(st.name, {})
                upstream_rerun = any(v["stage"] in dirty for v in inputs.values())
                if (done.get("status") == "done" and done.get("fingerprint") == fingerprint and not restart
                        and not upstream_rerun and all(Path(p).exists() for p in done["outputs"].values())):
                    print(f"[pipeline {i}/{total}] {st.name}: done in run {done['run_id']}, skipped", flush=True)
                    if st.name == self.stop_after:
                        break
                    continue
                if done.get("status") == "running" and done.get("run_id"):  # a killed earlier attempt
                    client.set_terminated(done["run_id"], status="KILLED")
                dirty.add(st.name)
                self._run_stage(client, parent, state, st, i, inputs, fingerprint)
                if st.name == self.stop_after:
                    break
            self._log_summary(client, parent, state)
        except KeyboardInterrupt:
            client.set_terminated(parent, status="KILLED")
            raise
        except BaseException:  # a failed stage, or a fault of the pipeline itself: the parent run is not left RUNNING
            client.set_terminated(parent, status="FAILED")
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        client.set_terminated(parent, status="FINISHED")
        print(f"[pipeline] finished: parent run {parent}; state in {self._state_file}", flush=True)
        return state

    def _run_stage(self, client, parent: str, state: dict, st: Stage, index: int, inputs: dict[str, dict],
                   fingerprint: str) -> None:
        stage_dir = child_dir(Path(self.output_dir).resolve(), st.name, "stage name")
        stage_dir.mkdir(parents=True, exist_ok=True)
        from lightning_post.tracking import process_tags

        tags = {"mlflow.parentRunId": parent, "pipeline.stage": st.name, "pipeline.index": str(index),
                "pipeline.command": st.command, "pipeline.config": " ".join(st.configs), **process_tags()}
        tags.update({f"lineage.{arg}": f"{v['stage']} {v['run_id']} {v['path']}" for arg, v in inputs.items()})
        run = client.create_run(client.get_run(parent).info.experiment_id, run_name=st.name, tags=tags)
        run_id = run.info.run_id
        record = {"status": "running", "run_id": run_id, "fingerprint": fingerprint, "started": time.time(),
                  "inputs": inputs, "outputs": {}}
        state["stages"][st.name] = record
        self._save_state(state)
        argv = self._argv(st, stage_dir, run_id, inputs)
        print(f"[pipeline {index}/{len(self.stages)}] {st.name}: {' '.join([st.command, *st.configs])} "
              f"(run {run_id}; log {stage_dir / 'stage.log'})", flush=True)
        try:
            rc = self._run_process(argv, stage_dir / "stage.log")
        except KeyboardInterrupt:
            record.update(status="failed", error="interrupted")
            self._save_state(state)
            client.set_terminated(run_id, status="KILLED")
            raise
        record["seconds"] = round(time.time() - record["started"], 1)
        if rc != 0:
            record.update(status="failed", returncode=rc)
            self._save_state(state)
            client.set_terminated(run_id, status="FAILED")
            raise PipelineError(
                f"stage {st.name} failed (exit code {rc}); its output is in {stage_dir / 'stage.log'}. "
                f"Stages before it are kept; run the same command again to resume at {st.name}.")
        record.update(status="done", outputs=self._outputs(st, stage_dir), finished=time.time())
        client.set_tag(run_id, "pipeline.outputs", json.dumps(record["outputs"]))
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="FINISHED")
        self._save_state(state)
        print(f"[pipeline {index}/{len(self.stages)}] {st.name}: done in {record['seconds']} s", flush=True)

    def _log_summary(self, client, parent: str, state: dict) -> None:
        """The parent run's record: every stage's final metrics as ``<stage>/<metric>``, seconds per stage, and
        ``lineage.json`` (which run made which output from which inputs)."""
        from lightning_post.tracking import log_json_artifact

        lineage = []
        for st in self.stages:
            rec = state["stages"].get(st.name)
            if not rec or rec.get("status") != "done":
                continue
            metrics = client.get_run(rec["run_id"]).data.metrics
            for key, value in metrics.items():
                if key != "epoch":
                    client.log_metric(parent, parent_metric_key(st, key), value)
            client.log_metric(parent, f"{st.name}/seconds", rec.get("seconds", 0.0))
            lineage.append({"stage": st.name, "command": st.command, "config": st.config, "run_id": rec["run_id"],
                            "inputs": {k: {"stage": v["stage"], "run_id": v["run_id"], "path": v["path"]}
                                       for k, v in rec["inputs"].items()},
                            "outputs": rec["outputs"]})
        log_json_artifact(client, parent, lineage, "lineage.json")
