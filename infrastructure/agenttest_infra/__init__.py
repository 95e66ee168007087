"""The AWS side of agenttest-operator as an AWS CDK (v2) app.

`AgentTestInfraStack` is the stack; `InfraConfig` holds its parameters and reads
them from CDK context (``cdk synth -c key=value`` or ``cdk.json``).
"""

from agenttest_infra.stack import (
    CLUSTER_NAME,
    CONTAINER_NAME,
    LOG_GROUP_NAME,
    LOG_STREAM_PREFIX,
    TASK_FAMILY,
    AgentTestInfraStack,
    InfraConfig,
)

__all__ = [
    "CLUSTER_NAME",
    "CONTAINER_NAME",
    "LOG_GROUP_NAME",
    "LOG_STREAM_PREFIX",
    "TASK_FAMILY",
    "AgentTestInfraStack",
    "InfraConfig",
]
