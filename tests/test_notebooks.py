"""Every notebook executes top to bottom (on the real default model, so marked slow)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    if path.name == "quickstart.ipynb":
        assert (tmp_path / "quickstart_loss.png").is_file()


def test_there_is_a_quickstart():
    assert (ROOT / "notebooks" / "quickstart.ipynb") in NOTEBOOKS
