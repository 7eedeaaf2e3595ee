"""Stage outputs: written whole or not at all, each with a manifest (what made it) and the
content hashes of its files (checked before anything reads it)."""
