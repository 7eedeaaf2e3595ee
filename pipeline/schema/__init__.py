"""The configuration machinery every crild file format shares (run configurations, study
files): strict pydantic models, a YAML loader that refuses duplicate keys, one-line error
messages, ``--explain`` help, and the stable hashes that fingerprints are made of."""
