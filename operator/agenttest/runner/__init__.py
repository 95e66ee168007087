"""What runs inside an execution: ``python -m agenttest.runner --config config.json``.

Two processes. The judge (``judge.py``) owns the execution's output and its verdict:
it starts the agent host (``agenthost.py``) for the user's agent.py, asks it each
case over a private channel, serves its model calls through a gateway that records
what the model was asked and answered, evaluates, and prints one signed result line
last. The agent host holds no key and no credential.

This package depends on strands-agents and the standard library only: it runs inside
the test image, where the operator's own dependencies (kopf, kubernetes, pydantic
models) are not installed. Never import other agenttest modules from here.
"""
