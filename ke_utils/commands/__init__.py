"""The command lines, installed as console scripts (``pyproject.toml``):

- ``ke-measure``: knowledge entropy of one model, for cluster jobs (:mod:`.measure`);
- ``ke-train``: continued training with injected knowledge at the study's scale (:mod:`.train`);
- ``ke-notebooks``: the main job, every notebook executed headless (:mod:`.run_notebooks`);
- ``ke-exercises``: the student copies of the notebooks (:mod:`.exercise_notebooks`).

``python -m ke_utils.measure`` and the other old module paths forward here.
"""
