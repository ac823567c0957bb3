"""`supersam <stage>`: one module per stage (convert, train, search, evaluate, export, demo) and the dispatcher.

Commands are the only code that resolves paths, loads models and data (through `supersam_hf.loading`) and prints;
each defines `ARGUMENTS` (the dataclasses `HfArgumentParser` parses, shared vocabulary first) and `run(*arguments)`.
"""
