"""The experiments behind the notebooks, one module each, each with the same pair
``findings(...)`` (``{claim: Finding}``, stated by :func:`ke_utils.report.record`) and
``key_numbers(...)`` (for :func:`ke_utils.report.key_numbers`):

- :mod:`~ke_utils.experiments.stages` (notebook 03): continued training from checkpoints of different ages;
- :mod:`~ke_utils.experiments.variants` (04): reactivated variants of one checkpoint and their controls;
- :mod:`~ke_utils.experiments.confound` (05): the learning-rate confound and the causal test;
- :mod:`~ke_utils.experiments.updates` (06): where continued training writes.

Each builds on one continued-training run, :func:`ke_utils.continual.train_and_evaluate`.
"""
