"""An exported adapter loads on another machine: its base is named by hub id (not this machine's cache path), and a
model cache moved elsewhere serves it offline to plain PEFT (``AutoPeftModelForCausalLM``) in a fresh process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from lightning_post.models import loading

LOAD_ELSEWHERE = """
import json, sys, torch
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids = torch.tensor([json.loads(sys.argv[2])])
with torch.no_grad():
    print(json.dumps(model(input_ids=ids).logits[0, -1, :8].tolist()))
assert "lightning_post" not in sys.modules  # plain PEFT and transformers did it all
"""


def test_an_exported_adapter_loads_with_plain_peft_from_moved_folders(tmp_path, monkeypatch, tiny_path):
    """tiny-llama stands in for an alias with a hub id (the real one, smollm2-135m-instruct, takes the same path):
    the adapter names the hub id; the hub cache entry made at conversion time is copied, with the export, to other
    folders; a fresh process that knows only those folders (no lightning-post cache, the hub offline) loads the
    adapter with PEFT and gives the logits of the merged export."""
    from huggingface_hub import constants

    from lightning_post.callbacks.export import export_model
    from lightning_post.methods.sft import SFTModule
    from lightning_post.models.peft import PeftSettings

    repo = "lightning-post-test/tiny-llama"
    hub = tmp_path / "hub"
    monkeypatch.setitem(loading.HUB_IDS, "tiny-llama", repo)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    module = SFTModule("tiny-llama", peft=PeftSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    module.configure_model()
    torch.manual_seed(1)
    with torch.no_grad():  # a trained adapter: B != 0, so the adapter changes the logits
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    written = export_model(module, tmp_path / "export")
    config = json.loads(Path(written["adapter"], "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == repo  # not the cache path
    assert str(loading.cache_dir()) not in Path(written["adapter"], "README.md").read_text()
    assert (hub / "models--lightning-post-test--tiny-llama" / "refs" / "main").read_text() == loading.CACHE_REVISION

    # another machine: the export and the hub cache copied (links followed), our own cache absent
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "export", elsewhere / "export")
    shutil.copytree(hub, elsewhere / "hub", symlinks=False)
    ids = [1, 504, 2115, 314, 253, 30]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LIGHTNING_POST"))}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(elsewhere / "hub"), HF_HOME=str(elsewhere / "hf"),
               LIGHTNING_POST_CACHE=str(elsewhere / "no-cache"), PYTHONPATH="")
    proc = subprocess.run([sys.executable, "-c", LOAD_ELSEWHERE, str(elsewhere / "export" / "adapter"),
                           json.dumps(ids)], capture_output=True, text=True, timeout=300, env=env, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.tensor(json.loads(proc.stdout.strip().splitlines()[0]))

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(written["model"], dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32).eval()
    with torch.no_grad():
        want = merged(input_ids=torch.tensor([ids])).logits[0, -1, :8]
        plain = base(input_ids=torch.tensor([ids])).logits[0, -1, :8]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (got - plain).abs().max() > 1e-3  # the adapter was applied, not just the base
    assert not (elsewhere / "no-cache").exists()


def test_a_hub_id_of_an_alias_resolves_offline_to_the_converted_copy(tmp_path, monkeypatch, tiny_path):
    from huggingface_hub import constants

    monkeypatch.setitem(loading.HUB_IDS, "tiny-llama", "lightning-post-test/tiny-llama")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert loading.resolve_model_path("lightning-post-test/tiny-llama") == tiny_path
    loading.check_model_source("lightning-post-test/tiny-llama")  # accepted before anything loads
    # an id already in the hub cache (a real download) is left to the hub cache
    monkeypatch.setattr(loading, "_cached_on_hub", lambda repo: True)
    assert loading.resolve_model_path("lightning-post-test/tiny-llama") == "lightning-post-test/tiny-llama"


def test_a_real_hub_download_is_never_replaced(tmp_path, monkeypatch, tiny_path):
    from huggingface_hub import constants

    repo_dir = tmp_path / "hub" / "models--org--model"
    (repo_dir / "snapshots" / "abc123").mkdir(parents=True)
    (repo_dir / "snapshots" / "abc123" / "config.json").write_text("{}")
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("abc123")
    monkeypatch.setitem(loading.HUB_IDS, "tiny-llama", "org/model")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert loading.register_in_hub_cache("tiny-llama", Path(tiny_path)) is None
    assert (repo_dir / "refs" / "main").read_text() == "abc123"
    assert sorted(p.name for p in (repo_dir / "snapshots").iterdir()) == ["abc123"]
