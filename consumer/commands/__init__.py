"""One module per `gr-consumer` command."""
