"""The `t2vu` command line: the entry point (`entry.main`) and one module per subcommand (`commands/`)."""
