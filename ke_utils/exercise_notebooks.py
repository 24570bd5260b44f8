"""``python -m ke_utils.exercise_notebooks`` is the command ``ke-exercises`` (:mod:`ke_utils.commands.exercise_notebooks`), kept so
that commands typed before the command lines moved keep working."""

from .commands.exercise_notebooks import main

if __name__ == "__main__":
    main()
