"""The error a user can fix from its message alone (one line, exit 2 in the CLI).

Defined apart from `unlearn.config` (which re-exports it) so that the lower modules that raise it —
the plugin registry, the model-family registry, the model-spec helpers — need not import the config
module, which imports them."""


class ConfigError(ValueError):
    """A config file failed validation; the message names file, key and fix."""
