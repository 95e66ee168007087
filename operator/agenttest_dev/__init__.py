"""The development kit: what develops and tests the operator, and is not the operator.

The local control plane (`devcluster`), the scripted model (`modelserver`), the
demo (`demo`) and the stand-ins for what this machine lacks: a node (`node`)
and Fargate with the awslogs driver (`fargate`). It lives beside the operator
package, not in it: the wheel (and so both images) carries `agenttest` only,
and the operator never imports this package (`make lint` checks both).
"""
