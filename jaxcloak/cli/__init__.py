"""The command line: parse flags, wire objects, print results."""
