"""The measurement core: works on any transformers causal LM (or encoder) and imports nothing else
from ``ke_utils``.

- :mod:`.architectures`: the one table of per-model facts (where each MLP's projections are);
- :mod:`.hooks`: forward hooks that capture the coefficients ``c`` (``[..., d_ff]``) per layer;
- :mod:`.batching`: tokenising and length-bucketed padding of texts;
- :mod:`.entropy`: coefficient means and knowledge entropy, in one process or data parallel
  (:mod:`.distributed`);
- :mod:`.related`: attention and next-token entropy, measured beside it;
- :mod:`.reactivation`: lifting the least-used neurons (the study's resuscitation) and its controls;
- :mod:`.attribution`: where parameter updates land, per neuron;
- :mod:`.modes`: train/eval mode kept around a measurement.
"""
