"""One module per command: parse-level checks, wiring, the call into pipelines, printing."""
