"""The front of the command line: every command listed and reachable, ``--version``, a mistyped command or setting
answered in one line with the nearest name, help without markup, ``--debug`` tracebacks, and the console script
itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_post import cli
from tests.conftest import CONFIGS, ROOT, write_jsonl
from tests.test_faults import run_main, runs_in, user_folder

ALL = [*cli.TRAINING_COMMANDS, *cli.TOOL_COMMANDS]
MARKUP = re.compile(r"``|:(class|func|mod|data|meth|attr):`")


def run_out(argv, capsys) -> tuple[int, str, str]:
    """``lightning-post <argv>`` in this process: (exit code, stdout, stderr)."""
    import logging

    handlers = list(logging.getLogger().handlers)  # main's basicConfig binds a handler to this test's stderr
    try:
        cli.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        logging.getLogger().handlers = handlers
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_every_command_and_each_one_answers_its_own_help(capsys):
    code, out, _ = run_out(["--help"], capsys)
    assert code == 0
    listed = re.findall(r"^  ([a-z-]+)  +\S", out, re.M)
    assert listed[:len(ALL)] == ALL  # every command, in the table's order, then the options
    from lightning_post.commands import command_classes

    # the table names exactly the commands of the registry, and each one's target imports: a command class for the
    # tools and data commands, a function of the arguments for training and runs
    classes = command_classes()
    assert set(cli.TOOL_COMMANDS) == {*(n for n in classes if " " not in n), "data", "runs"}
    assert [f"data {n}" for n in cli.DATA_COMMANDS] == [n for n in classes if n.startswith("data ")]
    assert all(callable(cli.TRAINING_COMMANDS[n].load()) for n in cli.TRAINING_COMMANDS)
    assert callable(cli.TOOL_COMMANDS["runs"].load())
    helps = [[c] for c in ALL if c != "data"] + [["data", d] for d in cli.DATA_COMMANDS] + [["data"]]
    for argv in helps:
        code, out, err = run_out(argv + ["--help"], capsys)
        usage = re.match(r"usage: lightning-post (\[options\] )?" + " ".join(argv), out)
        assert code == 0 and usage, (argv, out[:300], err[-500:])
        assert not MARKUP.search(out), (argv, MARKUP.search(out).group(0), out[:2000])


def test_shared_settings_are_listed_in_each_command_in_its_own_words(capsys):
    """The settings several commands share (commands/base.py) are each command's own in --help and --print_config,
    with the same default, and a command's own docstring words one where it means something particular to it."""
    import yaml

    helps = {}
    for name in ("evaluate", "redteam", "jailbreak-data"):
        code, out, _ = run_out([name, "--help"], capsys)
        assert code == 0
        helps[name] = " ".join(out.split())
        for setting in ("--tracking_uri", "--run_name", "--run_id", "--seed", "--device", "--batch_size", "--dtype"):
            assert setting in helps[name], (name, setting)
    assert "seed of the bootstrap intervals." in helps["evaluate"]
    assert "longest answer of the target." in helps["redteam"]
    assert "parameter dtype of model." in helps["jailbreak-data"]
    code, out, _ = run_out(["abtest", "--print_config"], capsys)
    printed = yaml.safe_load(out)
    assert {k: printed[k] for k in ("tracking_uri", "experiment_name", "output_dir", "seed", "batch_size", "device",
                                    "max_new_tokens", "dtype", "overwrite", "run_name", "run_id")} == {
        "tracking_uri": "sqlite:///mlruns/mlflow.db", "experiment_name": "abtest", "output_dir": "mlruns/abtest/latest",
        "seed": 0, "batch_size": 16, "device": None, "max_new_tokens": 96, "dtype": "float32", "overwrite": False,
        "run_name": None, "run_id": None}


def test_runs_clean_through_the_front(tmp_path, capsys):
    code, out, _ = run_out(["runs", "clean", "--tracking_uri", f"sqlite:///{tmp_path}/none.db"], capsys)
    assert code == 0 and out.strip() == "0 stale run(s) marked KILLED"


def test_version_names_ours_and_the_main_dependencies(capsys):
    from importlib.metadata import version

    import lightning_post

    code, out, _ = run_out(["--version"], capsys)
    assert code == 0 and out.startswith(f"lightning-post {lightning_post.__version__} (torch {version('torch')}, "
                                        f"lightning {version('lightning')},")


@pytest.mark.parametrize("argv,message", [
    (["evalute"], "lightning-post: error: 'evalute' is not a command; did you mean 'evaluate'?"),
    (["fitt", "--config", "x.yaml"], "lightning-post: error: 'fitt' is not a command; did you mean 'fit'?"),
    (["xyzzy"], "lightning-post: error: 'xyzzy' is not a command (lightning-post --help lists them)"),
    (["data", "lable"], "lightning-post data: error: 'lable' is not a data command; did you mean 'label'?"),
    (["--config", "configs/sft/default.yaml", "fit"], "lightning-post: error: the command comes first"),
    (["evaluate", "--max_promts", "3"], "lightning-post evaluate: error: unknown setting --max_promts; did you mean "
                                        "--max_prompts?"),
    (["evaluate", "--max_prompts", "many"], "lightning-post evaluate: error: max_prompts: expected int or null, got "
                                            "'many'"),
    (["abtest", "--privacy_probes", "maybe"], "lightning-post abtest: error: privacy_probes: expected bool, got "
                                              "'maybe'"),
    (["evaluate", "--judge", "gpt"], "lightning-post evaluate: error: judge must be 'llm', 'reward_model' or null, "
                                     "got 'gpt'"),
    (["fit", "--config", str(CONFIGS / "sft/tiny.yaml"), "--trainer.max_steps", "x"],
     "lightning-post fit: error: trainer.max_steps: expected int, got 'x'"),
    (["fit", "--config", str(CONFIGS / "sft/tiny.yaml"), "--model.init_args.dtyp", "bf16"],
     "lightning-post fit: error: model.init_args: option 'dtyp' is not accepted by lightning_post.SFTModule"),
    (["fit", "--config", str(CONFIGS / "sft/tiny.yaml"), "--model.init_args.optim.lr", "fast"],
     "lightning-post fit: error: model.init_args.optim.lr: expected float, got 'fast'"),
    (["evaluate", "--model", "./exports/none"], "lightning-post evaluate: error: model: no such folder: "
                                                "./exports/none"),
    (["evaluate", "--model", "runs/x/last.ckpt"], "lightning-post evaluate: error: model: no such checkpoint: "
                                                  "runs/x/last.ckpt"),
    (["abtest", "--model_b", "smollm2-135m-instrct"], "lightning-post abtest: error: model_b: 'smollm2-135m-instrct' "
                                                      "is not an alias (aliases: smollm2-135m-instruct, tiny-llama)"),
    (["redteam", "--target", "tiny-lama"], "did you mean 'tiny-llama'?"),
    (["data", "pairs", "--models", "[tiny-llama, ./gone]", "--prompts", "p.jsonl", "--output", "o.jsonl"],
     "lightning-post data pairs: error: models: no such folder: ./gone"),
])
def test_a_mistake_is_one_line_with_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run_out(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err[-3000:]
    assert not (tmp_path / "mlruns").exists()


def test_no_command_shows_the_overview_and_fails(capsys):
    code, out, err = run_out([], capsys)
    assert code == 2 and "training (LightningCLI):" in err and out == ""


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    from lightning_post.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no such folder"):
        cli.main(["evaluate", "--model", "./none", "--debug"])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(ConfigError, match="no such folder"):
        cli.main(["evaluate", "--model", "./none"])


def test_a_bad_record_in_fit_is_one_line_without_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "Name a colour."}])
    code, err = run_main(["fit", "--config", str(CONFIGS / "sft/tiny.yaml"), f"--data.init_args.train_files={bad}"],
                         capsys)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == f"lightning-post fit: error: {bad}:1: field 'response': is missing"
    assert runs_in(tmp_path) == []


def test_data_feedback_is_a_data_command_with_config_and_print_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    events = write_jsonl(tmp_path / "fb.jsonl", [
        {"prompt": "Capital of France?", "response": "Paris.", "thumbs": "up"},
        {"prompt": "서울은 어느 나라의 수도인가요?", "response": "일본입니다.", "thumbs": "down"},
        {"prompt": "2+2?", "response": "4", "ratings": {"helpfulness": 5}}])
    config = tmp_path / "feedback.yaml"
    config.write_text(f"files: {events}\noutput_dir: out\nmin_rating: 4.0\nlog_mlflow: false\n")
    code, out, _ = run_out(["data", "feedback", "--config", str(config), "--print_config"], capsys)
    assert code == 0 and "min_rating: 4.0" in out and "good_rating: 4.0" in out
    code, out, err = run_out(["data", "feedback", "--config", str(config)], capsys)
    assert code == 0, err[-2000:]
    written = json.loads((tmp_path / "out" / "report.json").read_text())["written"]
    # thumbs up and down -> 2 KTO events, the rating 5 >= good_rating one more; SFT: the unrated thumbs up and the
    # rating 5 >= min_rating 4.0; no comparison -> no pair
    assert written == {"unpaired.jsonl": 3, "pairs.jsonl": 0, "sft.jsonl": 2}
    sft = [json.loads(line) for line in (tmp_path / "out" / "sft.jsonl").read_text().splitlines()]
    assert [r["response"] for r in sft] == ["Paris.", "4"]
    # the old script is an alias of the same command
    from lightning_post.feedback_cli import main as old

    assert old([str(events), "--out-dir", str(tmp_path / "old"), "--no-mlflow"]) == 0
    assert json.loads((tmp_path / "old" / "report.json").read_text())["written"] == written
    # a user's folder is refused before anything is read
    mine = user_folder(tmp_path / "mine")
    code, out, err = run_out(["data", "feedback", "--config", str(config), f"--output_dir={mine}"], capsys)
    assert code == 2 and "already holds files written by a user" in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_help_and_version_import_no_torch():
    """What makes them answer at once: the front module and the package import nothing heavy (timed in
    benchmarks/cli_startup/cli_startup.py, not here)."""
    code = ("import sys; from lightning_post import cli\n"
            "for argv in (['--help'], ['--version'], ['data', '--help'], ['evalute']):\n"
            "    try: cli.main(argv)\n"
            "    except SystemExit: pass\n"
            "heavy = sorted(m for m in ('torch', 'lightning', 'transformers', 'jsonargparse', 'mlflow') "
            "if m in sys.modules)\n"
            "print('HEAVY', heavy, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert "HEAVY []" in proc.stderr, proc.stderr[-2000:]


def test_the_console_script_answers_help_and_a_bad_case():
    """The installed ``lightning-post`` script itself (the entry point in pyproject.toml)."""
    exe = Path(sys.executable).parent / "lightning-post"
    assert exe.exists(), f"{exe}: the console script is not installed (pip install -e .)"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and all(f"\n  {c} " in proc.stdout for c in ALL), proc.stdout
    proc = subprocess.run([str(exe), "evaluate", "--model", "./no/such/model"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == ["lightning-post evaluate: error: model: no such folder: "
                                                "./no/such/model"]
    # the old name of `lightning-post data feedback`, an installed script of its own
    proc = subprocess.run([str(exe.parent / "lightning-post-feedback"), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "lightning-post data feedback" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow  # a process per case (each imports torch)
def test_the_console_script_gives_one_line_and_exit_2_for_each_bad_case(tmp_path):
    """The bad cases a new user met, through the installed script: a mistyped command, a bad record in fit, a
    mistyped model alias, a missing export folder, a misspelled setting."""
    exe = str(Path(sys.executable).parent / "lightning-post")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "Name a colour."}])
    tiny = ["fit", "--config", str(CONFIGS / "sft/tiny.yaml")]
    cases = [
        (["evalute"], "lightning-post: error: 'evalute' is not a command; did you mean 'evaluate'?"),
        (tiny + [f"--data.init_args.train_files={bad}"], f"lightning-post fit: error: {bad}:1: field 'response': "
                                                          "is missing"),
        (tiny + ["--model.init_args.model_name_or_path=smollm2-135m-instrct"],
         "did you mean 'smollm2-135m-instruct'?"),
        (["evaluate", "--model", "exports/sft/model"], "lightning-post evaluate: error: model: no such folder: "
                                                       "exports/sft/model"),
        (["abtest", "--max_promts", "3"], "lightning-post abtest: error: unknown setting --max_promts; did you mean "
                                          "--max_prompts?"),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for argv, message in cases:
        proc = subprocess.run([exe, *argv], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
        lines = [line for line in proc.stderr.splitlines() if "error" in line or "Traceback" in line]
        assert proc.returncode == 2 and lines and message in lines[-1], (argv, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr and len(lines) == 1, (argv, proc.stderr[-3000:])
    assert runs_in(tmp_path) == [] and not (tmp_path / "mlruns" / "runs").exists()
