"""The site of executed notebooks (``ke-notebooks --html``): pages that load nothing over the
network, widgets shown as the figure they held, and an index with each notebook's title, summary,
main figure, key numbers, run time and versions. Built from a small executed notebook made here."""

from __future__ import annotations

import base64
import io
import json

import matplotlib
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from ke_utils.commands.site import main_figure, notebook_page, remote_loads, static_widgets, title_and_summary, write_site

matplotlib.use("Agg")


def png(color: str) -> str:
    """A base64 PNG of a small square figure of ``color``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.set_facecolor(color)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


RED, BLUE, GREEN = png("red"), png("blue"), png("green")


def executed_notebook():
    """An executed notebook as nbclient saves it: a title and summary, math, a figure, a tagged
    figure, and a widget (a VBox holding an Output widget that shows a figure) with its state."""
    widget_view = new_output("display_data", data={"application/vnd.jupyter.widget-view+json":
                                                   {"model_id": "box", "version_major": 2, "version_minor": 0},
                                                   "text/plain": "VBox(...)"})
    state = {"box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_slider", "IPY_MODEL_out"]}},
             "slider": {"model_name": "IntSliderModel", "state": {"value": 3}},
             "out": {"model_name": "OutputModel", "state": {"outputs": [
                 {"output_type": "display_data", "metadata": {}, "data": {"image/png": GREEN, "text/plain": "<Figure>"}}]}}}
    notebook = new_notebook(cells=[
        new_markdown_cell("# 09 · A test notebook\n\n**What this notebook shows.** How `ke_utils` draws **one** "
                          "figure.\n**What you will learn:** nothing else.\n\nSecond paragraph, $H = -\\sum p \\log p$."),
        new_code_cell("plot()", outputs=[new_output("display_data", data={"image/png": RED, "text/plain": "<Figure>"})]),
        new_code_cell("main()", metadata={"tags": ["main-figure"]},
                      outputs=[new_output("display_data", data={"image/png": BLUE, "text/plain": "<Figure>"})]),
        new_code_cell("explorer()", outputs=[widget_view]),
    ])
    notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": state, "version_major": 2,
                                                                                  "version_minor": 0}}
    return notebook


def test_static_widgets_puts_the_widgets_figure_in_its_place():
    notebook = executed_notebook()
    static_widgets(notebook)
    figure, note = notebook.cells[3].outputs
    assert figure["data"]["image/png"] == GREEN and "run the notebook to use its controls" in note["data"]["text/plain"]
    assert "widgets" not in notebook.metadata


def test_a_progress_bar_becomes_its_text():
    notebook = executed_notebook()
    notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"].update({
        "bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_label", "IPY_MODEL_progress", "IPY_MODEL_count"]}},
        "label": {"model_name": "HTMLModel", "state": {"value": "facts\u2007known:\u2007100%"}},
        "progress": {"model_name": "FloatProgressModel", "state": {"value": 12.0, "max": 12.0}},
        "count": {"model_name": "HTMLModel", "state": {"value": "\u200712/12\u2007[00:05&lt;00:00]"}}})
    notebook.cells[1].outputs.insert(0, new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "bar", "version_major": 2, "version_minor": 0}}))
    static_widgets(notebook)
    assert notebook.cells[1].outputs[0]["data"]["text/plain"] == "facts known: 100% 12/12 [00:05<00:00]"


def test_a_widget_without_stored_state_says_so():
    notebook = executed_notebook()
    del notebook.metadata["widgets"]
    static_widgets(notebook)
    assert "run the notebook" in notebook.cells[3].outputs[0]["data"]["text/plain"]


def test_main_figure_prefers_the_tagged_cell_then_the_first():
    notebook = executed_notebook()
    assert main_figure(notebook) == BLUE
    notebook.cells[2].metadata["tags"] = []
    assert main_figure(notebook) == RED


def test_title_and_summary():
    title, summary = title_and_summary(executed_notebook())
    assert title == "09 · A test notebook"
    assert summary == "How `ke_utils` draws **one** figure."


def test_remote_loads_finds_what_a_page_would_fetch():
    assert remote_loads('<script src="https://cdn.example.org/mathjax.js"></script>')
    assert remote_loads("<link rel=stylesheet href='//fonts.example.org/a.css'>")
    assert remote_loads("<style>@import url(https://fonts.example.org/x.css);</style>")
    assert remote_loads('<script type="module">const m = await import("https://cdn.example.org/mermaid.mjs");</script>')
    assert not remote_loads('<a href="https://arxiv.org/abs/2410.01380">the paper</a><img src="data:image/png;base64,AA">')


def test_a_page_loads_nothing_from_the_network():
    from nbconvert import HTMLExporter

    notebook = executed_notebook()
    raw, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    assert remote_loads(raw), "nbconvert's own page loads MathJax and the widget scripts from a CDN"
    page = notebook_page(notebook)
    assert remote_loads(page) == []
    assert all(image in page for image in (RED, BLUE, GREEN))  # the widget's figure, inline
    assert "H = -\\sum p \\log p" in page  # the formula as its TeX source
    assert "widget-view+json" not in page and "widget-state+json" not in page


@pytest.fixture
def results(tmp_path):
    """A results folder as ``ke-notebooks`` leaves it: one executed notebook, summary.json, environment.json."""
    nbformat.write(executed_notebook(), tmp_path / "09_test.ipynb")
    (tmp_path / "summary.json").write_text(json.dumps([{
        "notebook": "09_test.ipynb", "status": "ok", "seconds": 12.3, "peak_kernel_mb": 300,
        "numbers": [{"notebook": "09", "ke_decline": -0.06}], "findings": []}]))
    (tmp_path / "environment.json").write_text(json.dumps({"torch": "2.13.0", "transformers": "4.99"}))
    return tmp_path


def test_write_site_writes_an_index_and_a_page(results):
    index = write_site(results)
    assert index == results / "site" / "index.html"
    text = index.read_text()
    assert remote_loads(text) == []
    for expected in ("09 · A test notebook", "<code>ke_utils</code>", "<strong>one</strong>", "09_test.html",
                     BLUE, "ke_decline", "-0.06", "ran in 12 s", "torch 2.13.0", "transformers 4.99"):
        assert expected in text, expected
    assert RED not in text  # only the main figure
    page = (results / "site" / "09_test.html").read_text()
    assert GREEN in page and remote_loads(page) == []


def test_a_failed_notebook_is_marked_on_the_index(results):
    summary = json.loads((results / "summary.json").read_text())
    summary[0].update(status="failed", error="RuntimeError: out of memory")
    (results / "summary.json").write_text(json.dumps(summary))
    assert "failed: RuntimeError: out of memory" in write_site(results).read_text()
