"""The `llmos` command line and its T5X-style gin flag handling.

`main` dispatches subcommands; `gin_config.parse_gin` is the reusable gin entry
point that the trainer's tests and notebooks call directly.
"""
