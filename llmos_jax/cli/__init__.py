"""The `llmos` command line and its T5X-style gin flag handling.

`main` dispatches subcommands; each lives in its own module (`train_command`,
`eval_command`, `infer_command`, `data_commands`) built from the flag records
and parser in `flags`, with the flags several commands share in
`shared_flags`. `gin_config.parse_gin` is the reusable gin entry point that the
trainer's tests and notebooks call directly.
"""
