"""Execution backends: where a test's harness runs (see base.Executor)."""
