"""A site of the executed notebooks, for readers who only want to look: ``ke-notebooks --html``
writes ``<results>/site/``, one HTML page per executed notebook (figures inline, each widget
replaced by a static copy of what it showed when the notebook ran) and an ``index.html`` with
each notebook's title, summary, main figure, key numbers, status, run time and the package
versions of the run.

The pages open from the file system with no server and no network: nothing is loaded from a CDN
(nbconvert's MathJax, require.js and widget scripts are left out, so formulas show as their TeX
source). A figure becomes the main one on the index when its cell is tagged ``main-figure``;
otherwise the notebook's first figure is.
"""

from __future__ import annotations

import copy
import html
import json
import re
from pathlib import Path

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# What a page must not load from elsewhere: a script, stylesheet, image or frame with an http(s) source.
REMOTE_LOAD = re.compile(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*[\"']?(https?:)?//", re.IGNORECASE)
REMOTE_CSS = re.compile(r"@import\s+url\(\s*[\"']?(https?:)?//|url\(\s*[\"']?https?://", re.IGNORECASE)
# A script that imports a module from elsewhere (nbconvert's Mermaid loader does, from a CDN).
REMOTE_IMPORT = re.compile(r"\bimport\s*\(\s*[\"'](https?:)?//|\bfrom\s+[\"'](https?:)?//", re.IGNORECASE)


def remote_loads(page: str) -> list[str]:
    """The places where ``page`` (HTML) would load something over the network: tags with an
    http(s) or protocol-relative source, CSS ``url(...)`` imports and JavaScript module imports.
    Links a reader clicks (``<a href>``) are not loads."""
    return [m.group(0) for pattern in (REMOTE_LOAD, REMOTE_CSS, REMOTE_IMPORT) for m in pattern.finditer(page)]


def _strip_remote_scripts(page: str) -> str:
    """``page`` without the ``<script src=http...></script>`` and ``<link href=http...>`` tags that
    nbconvert's templates add (MathJax, require.js, the widget renderer), nor the inline scripts
    that import a module from a CDN (Mermaid)."""
    page = re.sub(r"<script\b[^>]*>(?:(?!</script>).)*?</script>",
                  lambda m: "" if REMOTE_IMPORT.search(m.group(0)) else m.group(0), page, flags=re.DOTALL | re.IGNORECASE)
    page = re.sub(r"<script\b[^>]*\bsrc\s*=\s*[\"']?(https?:)?//[^>]*>\s*</script>", "", page, flags=re.IGNORECASE)
    return re.sub(r"<link\b[^>]*\bhref\s*=\s*[\"']?(https?:)?//[^>]*>", "", page, flags=re.IGNORECASE)


def static_widgets(notebook) -> None:
    """Replace, in place, every widget output of an executed ``notebook`` (nbformat v4) with what
    it showed when the notebook was saved (nbclient stores the widgets' state in the notebook's
    metadata): the outputs its ``Output`` widgets held (a figure of its first view, with a line
    that says its controls need the running notebook), else the text of its labels (a progress
    bar's "12/12 [00:05<00:00]"). Drops the widget state afterwards."""
    state = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})

    def walk(model_id: str) -> list[dict]:
        """The states of the model and of every model under it, depth first."""
        model = state.get(model_id, {})
        found = [model]
        for child in model.get("state", {}).get("children", []):
            found += walk(child.removeprefix("IPY_MODEL_"))
        return found

    def text(value: str) -> str:
        return html.unescape(re.sub(r"<[^>]+>", "", value)).replace("\u2007", " ").strip()

    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        new = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                new.append(output)
                continue
            models = walk(view["model_id"])
            shown = [copy.deepcopy(o) for m in models for o in m.get("state", {}).get("outputs", [])]
            labels = " ".join(t for m in models if m.get("model_name") in ("HTMLModel", "LabelModel")
                              and (t := text(str(m.get("state", {}).get("value", "")))))
            note = ("(a static copy of the widget's first view: run the notebook to use its controls)" if shown
                    else labels or "(an interactive widget: run the notebook to use it)")
            new += shown + [{"output_type": "display_data", "metadata": {}, "data": {"text/plain": note}}]
        cell["outputs"] = new
    notebook.metadata.pop("widgets", None)


def _images(notebook) -> list[tuple[set[str], str]]:
    """Every PNG output of ``notebook``: (its cell's tags, base64 data)."""
    return [(set(cell.get("metadata", {}).get("tags", [])), output["data"]["image/png"])
            for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]


def main_figure(notebook) -> str | None:
    """The base64 PNG of the notebook's main figure: the first one in a cell tagged
    ``main-figure``, else its first figure; None without figures."""
    images = _images(notebook)
    tagged = [data for tags, data in images if "main-figure" in tags]
    return (tagged or [data for _, data in images] or [None])[0]


def title_and_summary(notebook) -> tuple[str, str]:
    """The notebook's first heading and the paragraph after it (up to "What you will learn"), as text."""
    source = next((cell.source for cell in notebook.cells if cell.cell_type == "markdown"), "")
    lines = source.strip().splitlines()
    title = lines[0].lstrip("#").strip() if lines and lines[0].startswith("#") else ""
    body = "\n".join(lines[1:] if title else lines).strip()
    paragraph = re.split(r"\n\s*\n", body)[0] if body else ""
    paragraph = paragraph.split("**What you will learn")[0].replace("**What this notebook shows.**", "")
    return title, " ".join(paragraph.split())


def _inline_markdown(text: str) -> str:
    """Escaped ``text`` with markdown's bold, code and links rendered (what the summaries use)."""
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"`(.+?)`", r"<code>\1</code>", out)
    out = re.sub(r"\*(.+?)\*", r"<em>\1</em>", out)
    return re.sub(r"\[(.+?)\]\((https?://[^)\s]+)\)", r'<a href="\2">\1</a>', out)


def notebook_page(notebook) -> str:
    """One executed notebook as a standalone HTML page (nbconvert's lab template, images inline,
    widgets static, no remote scripts)."""
    from nbconvert import HTMLExporter

    notebook = copy.deepcopy(notebook)
    static_widgets(notebook)
    page, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    return _strip_remote_scripts(page)


INDEX_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
article { border-top: 1px solid #ccc; padding: 1rem 0; display: grid; grid-template-columns: 1fr 20rem; gap: 1rem; }
article img { width: 100%; border: 1px solid #eee; }
h2 { margin: 0 0 .4rem 0; font-size: 1.2rem; } .meta { color: #555; font-size: .9rem; }
table { border-collapse: collapse; font-size: .85rem; } td, th { padding: .1rem .5rem; text-align: left; }
.failed { color: #a00; font-weight: bold; } code { background: #f4f4f4; padding: 0 .2rem; }
"""


def index_page(entries: list[dict], environment: dict) -> str:
    """The site's ``index.html``: per entry (``page``, ``title``, ``summary``, ``figure``: base64 PNG
    or None, and the run's ``status``, ``seconds``, ``numbers``: list of dicts), and the versions."""
    cards = []
    for e in entries:
        numbers = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</td></tr>"
                          for entry in e["numbers"] for k, v in entry.items() if k != "notebook")
        status = ("" if e["status"] == "ok"
                  else f' <span class="failed">failed: {html.escape(e.get("error", ""))}</span>')
        figure = (f'<a href="{e["page"]}"><img alt="main figure of {html.escape(e["title"])}" '
                  f'src="data:image/png;base64,{e["figure"]}"></a>') if e["figure"] else "<p>(no figure)</p>"
        cards.append(f'<article><div><h2><a href="{e["page"]}">{html.escape(e["title"])}</a></h2>'
                     f'<p>{_inline_markdown(e["summary"])}</p>'
                     f'<p class="meta">ran in {e["seconds"]:.0f} s{status}</p>'
                     f'<table>{numbers}</table></div><div>{figure}</div></article>')
    versions = ", ".join(f"{k} {v}" for k, v in environment.items() if v is not None)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Knowledge-entropy notebooks</title>'
            f"<style>{INDEX_STYLE}</style></head><body><h1>Knowledge-entropy notebooks: executed</h1>"
            f'<p class="meta">Ran with {html.escape(versions)}. Each page is the notebook as it ran, '
            f"outputs included; formulas show as their TeX source (no MathJax offline).</p>"
            + "".join(cards) + "</body></html>\n")


def write_site(results: Path) -> Path:
    """Write ``results/site/`` from the executed notebooks, ``summary.json`` and
    ``environment.json`` of a :func:`~ke_utils.commands.run_notebooks.run` in ``results``.
    Returns the path of ``index.html``."""
    import nbformat

    summary = json.loads((results / "summary.json").read_text())
    env_file = results / "environment.json"
    environment = json.loads(env_file.read_text()) if env_file.exists() else {}
    site = results / "site"
    site.mkdir(parents=True, exist_ok=True)
    entries = []
    for run in summary:
        notebook = nbformat.read(results / run["notebook"], as_version=4)
        page = Path(run["notebook"]).with_suffix(".html").name
        (site / page).write_text(notebook_page(notebook), encoding="utf-8")
        title, paragraph = title_and_summary(notebook)
        entries.append({**run, "page": page, "title": title or run["notebook"], "summary": paragraph,
                        "figure": main_figure(notebook)})
    index = site / "index.html"
    index.write_text(index_page(entries, environment), encoding="utf-8")
    return index
