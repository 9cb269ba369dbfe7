"""The command line (Typer). Library packages below never import it; see lungct.cli.main."""

from lungct.cli.main import app, main, run

__all__ = ["app", "main", "run"]
