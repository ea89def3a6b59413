"""`python -m llmos_jax` is the same as the `llmos` console script."""

from llmos_jax.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
