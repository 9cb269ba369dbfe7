"""lungct: transfer-learned lung CT classification with honest evaluation."""

__version__ = "0.1.0"
