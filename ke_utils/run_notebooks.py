"""``python -m ke_utils.run_notebooks`` is the command ``ke-notebooks`` (:mod:`ke_utils.commands.run_notebooks`), kept so
that commands typed before the command lines moved keep working."""

from .commands.run_notebooks import main

if __name__ == "__main__":
    main()
