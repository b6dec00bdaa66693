"""Errors that end a command with one clear line (status 2 for bad input)."""


class HvsimError(Exception):
    """Bad input or configuration: the CLI prints ``hvsim: <message>`` and exits with status 2."""

    status = 2


class ImageError(HvsimError):
    """The guest image is missing, truncated, malformed or for another architecture."""


class ConfigError(HvsimError):
    """A command-line or API setting is out of range or unknown."""


class PluginError(HvsimError):
    """A plugin is broken: a misspelt hook, a duplicate registration, an overlapping device."""
