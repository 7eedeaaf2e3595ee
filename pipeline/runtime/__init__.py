"""The process: ranks and collectives, progress lines, fault injection for crash tests."""
