"""``python -m ke_utils.train`` is the command ``ke-train`` (:mod:`ke_utils.commands.train`), kept so
that commands typed before the command lines moved keep working."""

from .commands.train import cli

if __name__ == "__main__":
    cli()
