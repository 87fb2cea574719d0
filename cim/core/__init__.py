"""Pure logic with no I/O: routing algorithms, tokens, ids, deadlines, parsing."""
