"""`python -m tinyae ...` is the `tinyae` command."""

from tinyae.cli import main

main()
