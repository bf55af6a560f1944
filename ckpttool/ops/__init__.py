"""What each command does, as data: one package per job."""
