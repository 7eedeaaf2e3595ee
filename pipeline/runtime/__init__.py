"""The process: ranks and collectives, progress lines, environment variables, fault injection for crash tests."""
