"""Side-by-side benchmark harness for authmount (see bench/README.md)."""
