"""Interactive views for notebooks (ipywidgets): pick a checkpoint and a layer, see how usage of
the memory neurons is distributed."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from .plots import plot_coefficient_distribution


def coefficient_explorer(frame: pd.DataFrame):
    """A checkpoint slider and a layer selector over the coefficient distribution of a sweep;
    the first checkpoint is drawn for reference."""
    import ipywidgets as widgets
    from IPython.display import display

    n_layers = frame["means"].iloc[0].shape[0]
    checkpoint = widgets.SelectionSlider(options=list(frame["step"]), value=frame["step"].iloc[-1],
                                         description="step", continuous_update=False)
    layer = widgets.Dropdown(options=list(range(n_layers)), value=n_layers - 1, description="layer")
    out = widgets.Output()

    def draw(*_):
        with out:
            out.clear_output(wait=True)
            first = frame.iloc[0]
            row = frame[frame["step"] == checkpoint.value].iloc[0]
            fig = plot_coefficient_distribution(
                {f"step {first.step}": first.means, f"step {row.step}": row.means}, layer.value)
            display(fig)  # works with any backend (plt.show(fig) does not)
            plt.close(fig)

    checkpoint.observe(draw, "value")
    layer.observe(draw, "value")
    draw()
    return widgets.VBox([widgets.HBox([checkpoint, layer]), out])
