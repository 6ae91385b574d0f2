"""Bad settings and whole-file problems are refused in one line that names the setting or the file, before the
MLflow run exists (each end-to-end case checks the store: no run, no run folder)."""

from __future__ import annotations

import gzip

import pytest

from tests.conftest import CONFIGS, ROOT, write_jsonl
from tests.test_faults import run_main, runs_in

TINY = ["fit", "--config", str(CONFIGS / "sft/tiny.yaml")]
TINY_DPO = ["fit", "--config", str(CONFIGS / "dpo/tiny.yaml")]

BAD_SETTINGS = [
    (TINY + ["--model.init_args.optim.lr=-0.001"], "model.optim.lr: must be > 0, got -0.001"),
    (TINY + ["--model.init_args.optim.name=adamx"], "model.optim.name: unknown optimizer 'adamx'"),
    (TINY + ["--model.init_args.optim.schedule=cosin"], "model.optim.schedule: unknown schedule 'cosin'"),
    (TINY + ["--model.init_args.peft.method=lorra"], "model.peft.method: unknown method 'lorra'"),
    (TINY + ["--model.init_args.peft.r=0"], "model.peft.r: the LoRA rank must be >= 1, got 0"),
    (TINY + ["--model.init_args.peft.target_modules=[qq_proj]"],
     "model.peft.target_modules: no module named 'qq_proj' in LlamaForCausalLM; its linear layers: down_proj, "
     "gate_proj, k_proj"),
    (TINY + ["--model.init_args.dtype=float8"], "model.dtype: unknown dtype 'float8'"),
    (TINY + ["--model.init_args.attn_implementation=flash"], "model.attn_implementation: unknown attention 'flash'"),
    (TINY + ["--model.init_args.model_name_or_path=tiny-lama"],
     "'tiny-lama' is not an alias (aliases: smollm2-135m-instruct, tiny-llama), a local folder or a cached hub model; "
     "the hub is not reachable offline (HF_HUB_OFFLINE); did you mean 'tiny-llama'?"),
    (TINY + ["--model.init_args.model_name_or_path=./no/such/model"],
     "model.model_name_or_path: no such folder: ./no/such/model"),
    (TINY + ["--model.init_args.micro_batch_size=0"], "model.micro_batch_size: must be >= 1 or null"),
    (TINY + ["--data.init_args.batch_size=0"], "data.batch_size: must be >= 1, got 0"),
    (TINY + ["--data.init_args.max_length=4"], "data.max_length: must be >= 16, got 4"),
    (TINY + ["--data.init_args.val_fraction=-0.5"], "data.val_fraction: must be in [0, 1)"),
    (TINY + ["--data.init_args.train_files=missing.jsonl"], "data.train_files: file missing.jsonl does not exist"),
    (TINY_DPO + ["--model.init_args.beta=-1"], "model.beta: must be > 0 (a negative beta trains toward the rejected"),
    (TINY_DPO + ["--model.init_args.simpo_gamma=1.0"], "model.simpo_gamma: 1.0 is not used by loss_type sigmoid"),
]


@pytest.mark.parametrize("argv,message", BAD_SETTINGS, ids=[m.split(":")[0] + "-" + a[-1].split("=")[-1][:12]
                                                            for a, m in BAD_SETTINGS])
def test_bad_setting_is_one_line_and_leaves_no_run(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = run_main(argv, capsys)
    last = err.strip().splitlines()[-1]  # the user's error is the last line, alone (no traceback after it)
    assert code == 2 and last.startswith(f"lightning-post {argv[0]}: error: ") and message in last, err[-3000:]
    assert runs_in(tmp_path) == [] and not (tmp_path / "mlruns" / "runs").exists()


def test_data_problems_found_while_tokenising_leave_no_run(tmp_path, monkeypatch, capsys):
    """Every pair identical: found only once the pairs are tokenised, which now happens before the run exists."""
    monkeypatch.chdir(tmp_path)
    same = [{"prompt": f"Question {i}?", "chosen": "Same answer.", "rejected": "Same answer."} for i in range(6)]
    pairs = write_jsonl(tmp_path / "same.jsonl", same)
    code, err = run_main(TINY_DPO + [f"--data.init_args.train_files={pairs}", f"--data.init_args.val_files={pairs}"],
                         capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last == f"lightning-post fit: error: {pairs}: no training pair is left: every pair has " \
        "chosen == rejected or an empty reply, or was dropped by truncation (data.max_length)", err[-3000:]
    assert runs_in(tmp_path) == [] and not (tmp_path / "mlruns" / "runs").exists()


def test_yaml_syntax_error_names_the_file_and_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: 4\nmodel:\n  init_args: {lr: [1, 2}\n")
    code, err = run_main(["fit", "--config", str(bad)], capsys)
    assert code == 2 and f"{bad}:4: YAML syntax error" in err and "<unicode string>" not in err, err
    code, err = run_main(["evaluate", "--config", str(tmp_path / "none.yaml")], capsys)
    assert code == 2 and f"{tmp_path / 'none.yaml'}: file not found" in err
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    code, err = run_main(["fit", f"--config={listed}"], capsys)
    assert code == 2 and "must hold a mapping of settings, got list" in err


@pytest.mark.parametrize("kind,message", [
    ("empty", "{f}: is empty"),
    ("blank", "{f}: holds only blank lines"),
    ("binary", "{f}:3: not UTF-8 text (byte offset 93)"),  # two 38-byte lines, then 17 bytes of '{"instruction": "'
    ("gzip", "{f}: truncated or corrupt gzip archive"),
    ("array", "{f}: holds an empty list: no records"),
])
def test_whole_file_problems_name_the_file(tmp_path, kind, message):
    from lightning_post.records.files import DataError
    from lightning_post.records.instruction import load_instruction_records

    good = b'{"instruction": "a", "response": "b"}\n'
    name = {"gzip": "d.jsonl.gz", "array": "d.json"}.get(kind, "d.jsonl")
    f = tmp_path / name
    f.write_bytes({"empty": b"", "blank": b"\n  \n\n", "binary": good + good[:-1] + b"\n" + b'{"instruction": "\xff"}\n',
                   "gzip": gzip.compress(good * 300)[:40], "array": b"[]\n"}[kind])
    with pytest.raises(DataError) as e:
        load_instruction_records([f])
    assert str(e.value).startswith(message.format(f=f)), str(e.value)


def test_a_bad_data_file_in_fit_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "d.jsonl"
    f.write_bytes(b"\xff\xfe\x00binary")
    code, err = run_main(TINY + [f"--data.init_args.train_files={f}"], capsys)
    assert code == 2 and err.strip().splitlines()[-1] == f"lightning-post fit: error: {f}:1: not UTF-8 text (byte " \
        "offset 0)", err[-3000:]
    assert runs_in(tmp_path) == []


def test_abtest_refuses_zero_prompts_and_duplicate_verdicts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    uri = f"--tracking_uri=sqlite:///{tmp_path}/mlruns/mlflow.db"
    base = ["abtest", "--config", str(CONFIGS / "abtest/tiny.yaml"), f"--output_dir={tmp_path / 'out'}", uri]
    code, err = run_main(base + ["--max_prompts=0"], capsys)
    assert code == 2 and "max_prompts: must be >= 1 or null (all), got 0" in err
    ann = write_jsonl(tmp_path / "v.jsonl", [{"index": 0, "verdict": "A"}, {"index": 1, "verdict": "B"},
                                             {"index": 0, "verdict": "B"}])
    code, err = run_main(base + ["--max_prompts=2", f"--annotations={ann}"], capsys)
    assert code == 2 and f"{ann}:3: field 'index': prompt 0 already has a verdict, at {ann}:1" in err, err[-2000:]
    assert runs_in(tmp_path) == [] and not (tmp_path / "out").exists()


def test_annotations_of_identical_answers_are_refused(tmp_path):
    from lightning_post.records.files import DataError
    from lightning_post.records.annotations import load_annotations

    f = write_jsonl(tmp_path / "a.jsonl", [
        {"prompt": "Hi", "response_a": "Hello", "response_b": "Hey", "overall": "A", "annotator": "p1"},
        {"prompt": "Hi", "response_a": "Hello!", "response_b": " Hello! ", "overall": "B", "annotator": "p1"}])
    with pytest.raises(DataError, match=rf"{f}:2: field 'response_b': is the same text as response_a"):
        load_annotations([f])


def test_settings_check_functions_directly():
    """The checks without the CLI: the boundary values pass, one step past them fails."""
    from lightning_post.errors import ConfigError
    from lightning_post.models.peft import PeftSettings, check_peft_settings
    from lightning_post.optim import OptimSettings, check_optim_settings

    check_optim_settings(OptimSettings(lr=1e-9, warmup_steps=0, min_lr_ratio=1.0))
    check_peft_settings(PeftSettings(r=1, dropout=0.0))
    with pytest.raises(ConfigError, match=r"min_lr_ratio: must be in \[0, 1\], got 1.5"):
        check_optim_settings(OptimSettings(min_lr_ratio=1.5))
    with pytest.raises(ConfigError, match=r"model.peft.dropout: must be in \[0, 1\), got 1.0"):
        check_peft_settings(PeftSettings(dropout=1.0))
    with pytest.raises(ConfigError, match="betas"):
        check_optim_settings(OptimSettings(betas=(0.9, 1.0)))


def test_identical_answers_make_no_pair():
    """Two models with the same answer: no pair to judge (a verdict between them would be noise)."""
    from lightning_post.quality.collect import build_pairs

    answers = [{"prompt_id": "p", "prompt": "Hi", "model": m, "response": r}
               for m, r in (("m1", "Hello."), ("m2", " Hello. "), ("m3", "Hey there."))]
    pairs = build_pairs(answers)
    assert sorted(tuple(sorted((p["model_a"], p["model_b"]))) for p in pairs) == [("m1", "m3"), ("m2", "m3")]
