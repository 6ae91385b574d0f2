"""Screenshots of the MLflow UI for a store: the pipeline experiment's runs table (parents expanded to their child
runs) and the latest parent run's page, taken in headless Chromium (scripts/setup_browser.sh).

    .venv/bin/python scripts/mlflow_screenshot.py --store mlruns --out shots/
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser import Browser  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="mlruns", help="folder holding mlflow.db")
    ap.add_argument("--experiment", default="pipeline")
    ap.add_argument("--out", default="shots")
    ap.add_argument("--run-name", default=None, help="the parent run to show (default: the latest)")
    args = ap.parse_args()
    import mlflow

    store = Path(args.store).resolve()
    uri = f"sqlite:///{store}/mlflow.db"
    exp = mlflow.MlflowClient(uri).get_experiment_by_name(args.experiment)
    if exp is None:
        sys.exit(f"no experiment {args.experiment!r} in {uri}")
    parents = mlflow.MlflowClient(uri).search_runs([exp.experiment_id], "tags.method = 'pipeline'",
                                                   order_by=["attributes.start_time DESC"])
    parents = [p for p in parents if args.run_name in (None, p.info.run_name)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host",
                               "127.0.0.1", "--port", str(port)], cwd=store.parent,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(180):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=5).status == 200:
                    break
            except OSError:
                time.sleep(1)
        with Browser(height=900) as b:
            b.open(f"{url}/#/experiments/{exp.experiment_id}/runs")
            b.wait_for_text(parents[0].info.run_name if parents else "Run Name")
            for parent in parents:  # the expand button in the cell that shows the parent run's name
                b.click("button", cell=parent.info.run_name)
            time.sleep(2)
            b.click("button", name="Close")  # the Assistant panel
            time.sleep(1)
            print(b.screenshot(out / "runs.png"))
            if parents:
                b.open(f"{url}/#/experiments/{exp.experiment_id}/runs/{parents[0].info.run_id}")
                b.wait_for_text("Metrics")
                time.sleep(2)
                print(b.screenshot(out / "parent.png"))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
