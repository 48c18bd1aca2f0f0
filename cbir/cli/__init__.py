"""The command line: thin faces over :mod:`cbir.service` that parse, call and print."""
