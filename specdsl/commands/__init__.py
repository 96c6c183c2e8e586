"""What each `specc` command does, one module a command (or a pair that share their work). specdsl/cli.py declares
the commands' options with typer and maps errors to exit codes; these modules do the work, raising SpecError for
bad input. They sit above the backends and training, which know nothing of the command line."""
