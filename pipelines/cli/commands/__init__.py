"""One module per `t2vu` subcommand; each exposes `register(subparsers)`."""
