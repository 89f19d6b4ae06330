"""Errors a user can act on: the CLI prints them as one line, never as a traceback."""


class LlmlabError(Exception):
    """Base class for mistakes in user input (files, shapes, config values)."""


class ConfigError(LlmlabError, ValueError):
    """A config value is invalid; the message names the field."""
