"""The exploration notebook runs top to bottom (nbclient) on a small data set, and is kept in git
without outputs.

The kernel is this test's own Python (the project's .venv): a kernelspec is written to a
temporary ``JUPYTER_PATH``, so nothing needs installing in the user's Jupyter folders and a
clean machine with only the .venv runs it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "01_tiers_and_churn.ipynb"
KERNEL = "tier-ml-test"


def test_committed_notebook_has_no_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the notebook has code cells"
    for cell in code:
        assert cell.get("outputs") == [], f"outputs in cell: {cell.source[:60]!r}"
        assert cell.get("execution_count") is None, f"execution count in cell: {cell.source[:60]!r}"


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec that starts ``sys.executable`` (found through a temporary JUPYTER_PATH)."""
    folder = tmp_path / "jupyter" / "kernels" / KERNEL
    folder.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tier-ml (test)",
        "language": "python",
    }
    (folder / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    return KERNEL


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_an_empty_store(
    kernel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbclient import NotebookClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("TIER_ML_NOTEBOOK_CUSTOMERS", "2000")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, kernel_name=kernel, timeout=240, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    began = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - began
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert errors == []
    text = "\n".join(
        o.get("text", "") + json.dumps(o.get("data", {}).get("text/plain", ""))
        for cell in code
        for o in cell.outputs
    )
    assert "trained: churn version 1" in text  # the empty store made the notebook train
    assert "Gold customers" in text
    images = sum("image/png" in o.get("data", {}) for cell in code for o in cell.outputs)
    assert images >= 4  # pyramid, distributions and the run's plots
    print(f"notebook ran in {seconds:.0f}s")
