"""The in-container test harness: ``python -m agenttest.runner --config config.json``.

It imports the user's agent.py, points its Agent at the configured model, runs each
case in a fresh conversation and prints one machine-readable result line last.

This package depends on strands-agents and the standard library only: it runs inside
the test image, where the operator's own dependencies (kopf, kubernetes, pydantic
models) are not installed. Never import other agenttest modules from here.
"""
