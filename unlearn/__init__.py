"""unlearn: a machine-unlearning evaluation suite."""

__version__ = "0.1.0"
