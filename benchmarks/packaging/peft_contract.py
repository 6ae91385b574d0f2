"""The contract between lightning_post's fused LoRA forward and PEFT, checked for every PEFT release that
pyproject.toml admits.

``lightning_post.models.peft.fuse_lora_forward`` replaces the forward of PEFT's ``lora.layer.Linear`` and reads its
internals (``lora_A``, ``lora_B``, ``lora_dropout``, ``scaling``, ``lora_variant``, ``active_adapters``, ``merged``,
``disable_adapters``, ``base_layer``). A PEFT release that renames or re-means one of them breaks the fused forward,
silently or loudly. For each admitted release this script

1. installs that peft alone (``pip install --no-deps --target``) into a temporary folder,
2. runs the project's contract test ``tests/test_speed.py::test_fused_lora_forward_equals_peft`` (a 2-layer Llama:
   loss and every gradient of the fused forward equal PEFT's, adapters disabled equal the base, every projection
   fused) with ``PYTHONPATH`` pointing at that folder,
3. runs the layer probe below (``--probe``): one LoRA ``Linear`` with random adapters, fused forward against PEFT's
   own ``forward``: the largest absolute difference of the output and of the input, A and B gradients, in eval mode,
   in train mode with dropout (same seed), with adapters disabled, and with ``lora_bias=True``,

and writes the table to ``benchmarks/packaging/PEFT_CONTRACT.md``.

    .venv/bin/python benchmarks/packaging/peft_contract.py            # every admitted release
    .venv/bin/python benchmarks/packaging/peft_contract.py 0.21.2     # the named ones
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "packaging" / "PEFT_CONTRACT.md"
TEST = "tests/test_speed.py::test_fused_lora_forward_equals_peft"
TOL = 1e-5  # float32: the fused addmm and PEFT's separate ops round differently, by a few ulps


# ---- the layer probe (runs with the peft under test) -------------------------------------------------------------
def probe() -> dict:
    import peft
    import torch
    from peft import LoraConfig, get_peft_model

    from lightning_post.models.peft import fuse_lora_forward

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(24, 40)

        def forward(self, x):
            return self.proj(x)

    def build(**lora):
        torch.manual_seed(0)
        model = get_peft_model(Net(), LoraConfig(r=4, lora_alpha=8, target_modules=["proj"], **lora))
        layer = model.base_model.model.proj
        with torch.no_grad():
            for p in layer.lora_B.parameters():
                p.copy_(torch.randn(p.shape) * 0.1)  # B starts at zero: make the adapter matter
        return model, layer

    def run(layer, x, forward, seed=0):
        x = x.clone().requires_grad_(True)
        torch.manual_seed(seed)  # dropout draws the same mask in both forwards
        out = forward(x)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        grads = {"x": x.grad, **{n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}}
        layer.zero_grad()
        return out.detach(), grads

    def compare(layer, x):
        fused = run(layer, x, layer.forward)  # the instance attribute fuse_lora_forward set
        plain = run(layer, x, lambda t: type(layer).forward(layer, t))  # PEFT's own forward
        diffs = [(fused[0] - plain[0]).abs().max().item()]
        diffs += [(fused[1][k] - plain[1][k]).abs().max().item() for k in plain[1] if k in fused[1]]
        missing = sorted(set(plain[1]) - set(fused[1]))  # parameters PEFT trains and the fused forward does not
        return max(diffs) if not missing else f"{max(diffs):.1e}, no gradient: {', '.join(missing)}"

    x = torch.randn(3, 7, 24)
    result = {"peft": peft.__version__, "peft_file": peft.__file__, "torch": torch.__version__}
    model, layer = build(lora_dropout=0.0)
    result["fused_layers"] = fuse_lora_forward(model)
    model.eval()
    result["eval"] = compare(layer, x)
    with model.disable_adapter():
        base = layer.base_layer(x)
        result["disabled"] = max(compare(layer, x), (layer(x) - base).abs().max().item())
    model, layer = build(lora_dropout=0.1)
    fuse_lora_forward(model)
    model.train()
    result["dropout_train"] = compare(layer, x)
    try:
        model, layer = build(lora_dropout=0.0, lora_bias=True)
    except TypeError as e:  # a release without lora_bias
        result["lora_bias"] = f"n/a ({e})"
    else:
        fuse_lora_forward(model)
        result["lora_bias"] = compare(layer, x)
    return result


# ---- the driver ---------------------------------------------------------------------------------------------------
def admitted_versions() -> tuple[str, list[str], list[str]]:
    """The peft requirement of pyproject.toml, the releases on the index that it admits, and the releases just
    outside it (the minor series below the range, and every newer release), oldest first."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    req = next(Requirement(d) for d in deps if Requirement(d).name == "peft")
    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "peft", "--disable-pip-version-check"],
                         capture_output=True, text=True, check=True).stdout
    listed = re.search(r"Available versions: (.*)", out).group(1).split(", ")
    listed = sorted((v for v in listed if not Version(v).is_prerelease), key=Version)
    admitted = [v for v in listed if req.specifier.contains(v)]
    below = [v for v in listed if Version(v) < Version(admitted[0])]
    below = [v for v in below if Version(v).release[:2] == Version(below[-1]).release[:2]] if below else []
    above = [v for v in listed if Version(v) > Version(admitted[-1])]
    return str(req), admitted, below + above


def check(version: str, work: Path) -> dict:
    target = work / f"peft-{version}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--target", str(target), f"peft=={version}"], check=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    row = {"version": version}
    t = time.perf_counter()
    test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    row["test"] = "pass" if test.returncode == 0 else "FAIL"
    row["test_tail"] = (test.stdout + test.stderr).strip().splitlines()[-1:] if test.returncode else []
    if test.returncode:
        fails = [line for line in test.stdout.splitlines() if line.startswith("E ")]
        row["test_tail"] = fails[:3] + row["test_tail"]
    pr = subprocess.run([sys.executable, __file__, "--probe"], cwd=ROOT, env=env, capture_output=True, text=True)
    if pr.returncode == 0:
        row["probe"] = json.loads(pr.stdout.strip().splitlines()[-1])
        assert row["probe"]["peft"] == version and str(target) in row["probe"]["peft_file"], row["probe"]
    else:
        row["probe"] = {"error": pr.stderr.strip().splitlines()[-1]}
    row["seconds"] = round(time.perf_counter() - t, 1)
    return row


def fmt(v) -> str:
    return f"{v:.1e}" if isinstance(v, float) else str(v)


def verdict(row: dict) -> str:
    p = row["probe"]
    ok = row["test"] == "pass" and "error" not in p and p["fused_layers"] == 1 and \
        all(isinstance(p[k], float) and p[k] <= TOL for k in ("eval", "disabled", "dropout_train"))
    return "pass" if ok else "FAIL"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("versions", nargs="*", help="peft releases to check (default: every one pyproject.toml admits)")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        print(json.dumps(probe()))
        return
    spec, admitted, outside = admitted_versions()
    versions = args.versions or sorted(admitted + outside, key=lambda v: tuple(map(int, re.findall(r"\d+", v))))
    import torch
    import transformers

    rows = []
    with tempfile.TemporaryDirectory(prefix="peft-contract-") as work:
        for v in versions:
            rows.append(check(v, Path(work)))
            r = rows[-1]
            print(f"peft {v}: {verdict(r)} (test {r['test']}, probe {r['probe']}) {r['seconds']} s", flush=True)
    lines = [
        "# Fused LoRA forward against PEFT, release by release",
        "",
        f"Requirement in pyproject.toml: `{spec}`. Written by `benchmarks/packaging/peft_contract.py` on "
        f"{datetime.date.today()}.",
        "",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, Python "
        f"{platform.python_version()}; CPU only",
        f"- Other packages: torch {torch.__version__}, transformers {transformers.__version__} (from `.venv`); each "
        "peft installed alone with `pip install --no-deps --target <tmp> peft==<version>` and put first on "
        "`PYTHONPATH`",
        f"- Command: `.venv/bin/python benchmarks/packaging/peft_contract.py{' ' + ' '.join(args.versions) if args.versions else ''}`",
        f"- `test`: `{TEST}` (loss and every gradient of a 2-layer Llama with LoRA on all linear layers, fused "
        "against PEFT's forward, relative tolerance 1e-6; adapters disabled equal the base; every projection fused)",
        "- A failure shows the test's first error line; the probe's error is in the `fused layers` column",
        "- Probe columns: the largest absolute difference between the fused forward and PEFT's own `Linear.forward` "
        "on one LoRA layer (output and the input, A and B gradients; float32), in eval mode, with adapters disabled, "
        f"in train mode with dropout 0.1 (same seed), and with `lora_bias=True`. Pass: the test passes, the layer is "
        f"fused and the first three are <= {TOL:g}. `lora_bias` is reported, not judged: see the note below.",
        "",
        "Releases outside the range are checked too (the minor series just below it, any newer release), to show "
        "why the range ends where it does and when a new release can be admitted.",
        "",
        "| peft | in range | result | test | fused layers | eval | disabled | dropout (train) | lora_bias=True | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["probe"]
        if "error" in p:
            cells = [p["error"]] + [""] * 4
        else:
            cells = [p["fused_layers"], fmt(p["eval"]), fmt(p["disabled"]), fmt(p["dropout_train"]),
                     fmt(p["lora_bias"])]
        test = r["test"] + ("".join(f"<br>`{t}`" for t in r["test_tail"]) if r["test_tail"] else "")
        lines.append("| " + " | ".join(map(str, [r["version"], "yes" if r["version"] in admitted else "**no**", verdict(r), test, *cells, r["seconds"]])) + " |")
    lines += [
        "",
        "## Note: `lora_bias=True`",
        "",
        "PEFT's `lora_bias=True` (reachable through the `peft.extra` settings) gives `lora_B` a bias. The fused forward "
        "multiplies by `lora_B.weight` alone: its output misses the bias and the bias gets no gradient, in every "
        "release above. `fuse_lora_forward` should leave such layers to PEFT's forward (`lora_B[name].bias is not "
        "None`). The column stays in the table until it reads like the others.",
        "",
    ]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
