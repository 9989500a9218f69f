"""The one error a bad config raises."""


class ConfigError(ValueError):
    """A config key holds a value that cannot work; the message names the key and the fix."""
