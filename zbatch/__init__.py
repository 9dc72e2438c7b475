"""`python -m zbatch`: the `zbatch` command under its own name (the code lives in `runner`)."""
