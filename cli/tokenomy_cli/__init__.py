"""The ``tokenomy`` command: one entry point, a subcommand per job."""
