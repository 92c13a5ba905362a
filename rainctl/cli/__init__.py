"""The `rainctl` command line (Typer + rich)."""
