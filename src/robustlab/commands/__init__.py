"""CLI subcommands: every module here defines `register(subparsers)`; cli.py discovers them."""
