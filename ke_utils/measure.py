"""``python -m ke_utils.measure`` is the command ``ke-measure`` (:mod:`ke_utils.commands.measure`), kept so
that commands typed before the command lines moved keep working."""

from .commands.measure import cli

if __name__ == "__main__":
    cli()
