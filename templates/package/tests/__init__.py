"""The AgentTest's cases as a regression suite: ``python -m tests.regression --url ...``."""
