"""Execution backends: where a test's runner runs (see base.Executor)."""
