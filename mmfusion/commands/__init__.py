"""One module per `mmfusion` subcommand; each defines `register(subparsers)`."""
