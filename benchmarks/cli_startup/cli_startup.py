"""How long the command line takes to answer before any work: ``lightning-post --help``, ``--version``, a mistyped
command, and the help of a tool and of ``fit`` (which import their modules), each run ``--repeats`` times in turn as
a new process through the installed console script; writes ``benchmarks/cli_startup/CLI_STARTUP.md``.

    .venv/bin/python benchmarks/cli_startup/cli_startup.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CASES = [["--help"], ["--version"], ["evalute"], ["data", "--help"], ["evaluate", "--help"], ["fit", "--help"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    exe = str(Path(sys.executable).parent / "lightning-post")
    times: dict[str, list[float]] = {" ".join(c): [] for c in CASES}
    for _ in range(args.repeats):  # alternating: every case sees the same machine load
        for case in CASES:
            start = time.perf_counter()
            subprocess.run([exe, *case], capture_output=True, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
            times[" ".join(case)].append(time.perf_counter() - start)
    load = os.getloadavg()[0]
    lines = ["# Command-line start-up", "",
             f"- Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; load "
             f"average at the end {load:.2f}",
             f"- Produced by: `python benchmarks/cli_startup/cli_startup.py --repeats {args.repeats}` (each case a new process "
             "through the console script, cases alternating)", "",
             "| command | median s | min s | max s |", "|---|---|---|---|"]
    for case, t in times.items():
        lines.append(f"| `lightning-post {case}` | {statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} |")
    lines += ["", "`--help`, `--version` and a mistyped command import neither torch nor Lightning "
              "(`tests/test_cli_front.py` checks the imports, not the time); a command's own `--help` imports its "
              "module, and `fit --help` builds LightningCLI's parser for every method."]
    (ROOT / "benchmarks" / "cli_startup" / "CLI_STARTUP.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
