"""notebooks/quickstart.ipynb runs top to bottom (papermill), and is committed without outputs.

CI has installed the package already, so the run skips the install cell
(`INSTALL=False`) and trains 20 steps instead of a few hundred. Each of the
notebook's steps checks its own result (the loss falls, the Hugging Face logits
match transformers', the server answers), so a cell that breaks fails here;
this test also checks what the run printed and drew.
"""

from __future__ import annotations

import pathlib

import nbformat
import papermill
import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_committed_notebook_has_no_outputs_and_a_parameters_cell():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    cells = code_cells(notebook)
    assert all(cell.outputs == [] and cell.execution_count is None for cell in cells), \
        "strip the outputs: jupyter nbconvert --clear-output --inplace notebooks/quickstart.ipynb"
    tagged = [cell for cell in cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("INSTALL", "NUM_STEPS", "WORKDIR"):
        assert f"{name} = " in tagged[0].source
    assert cells.index(tagged[0]) == 0  # Before the install cell it controls.


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path):
    output = tmp_path / "quickstart.out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(output), cwd=str(NOTEBOOK.parent), kernel_name="python3",
        parameters={"INSTALL": False, "NUM_STEPS": 20, "WORKDIR": str(tmp_path / "work")},
        progress_bar=False, execution_timeout=600)
    ran = nbformat.read(output, as_version=4)
    outputs = [out for cell in code_cells(ran) for out in cell.outputs]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert any("image/png" in out.get("data", {}) for out in outputs), "no plot was drawn"
    assert "train loss" in text and "largest logit difference" in text
    assert "--- streamed ---" in text
    assert (tmp_path / "work" / "quickstart" / "export" / "meta.json").is_file()
    assert "bits per byte" in text and "held-out after 20 steps" in text
