"""One module per subcommand: recipe -> engine -> store."""
