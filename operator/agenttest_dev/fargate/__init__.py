"""AWS for the Fargate backend's tests: a real moto server on loopback, and Fargate itself.

`AwsEnvironment` starts moto's threaded HTTP server in this process and
provisions (over HTTP, with boto3) what the CDK app in infrastructure/ would:
a VPC with two subnets and a security group, the ECS cluster ``agenttest``
with the FARGATE and FARGATE_SPOT capacity providers, the task definition
``agenttest-runner``, its IAM roles, the log group ``/agenttest/runner`` and
the S3 bucket ``agenttest-packages``. Anything that talks to `endpoint`
(`env()` gives a process what it needs) sees plain AWS APIs.

`FargatePlayer` does what Fargate and the awslogs driver do. A background
thread polls moto's ECS backend (in process) for new tasks on the cluster,
moves each through PROVISIONING -> PENDING -> RUNNING, runs the container's
command as a local process (own process group, scrubbed environment, fresh
directories), ships every output line to the CloudWatch Logs stream
``<prefix>/<container>/<task-id>``, and marks the task STOPPED with the exit
code when the process ends, or kills it when someone calls StopTask.

The player also makes moto behave like ECS where moto does not (each fix is a
patch of a moto class, undone by `FargatePlayer.stop()`):

* RunTask returns tasks in PROVISIONING, honours ``clientToken`` (same token,
  same cluster -> the same tasks), rejects container overrides over 8192
  characters and task sizes Fargate does not offer, as ECS does;
* StopTask only asks for the stop (desiredStatus STOPPED, stopCode
  UserInitiated, the caller's reason); lastStatus follows when the process is
  gone. Unknown tasks get InvalidParameterException instead of a 500;
* DescribeTasks looks in the given cluster only and reports unknown tasks as
  ``failures: [{arn, reason: MISSING}]``;
* ListTasks without ``desiredStatus`` lists only tasks whose desired status is
  RUNNING (ECS's default filter);
* moto's own clock-less status progression (every DescribeTasks would advance
  a task towards STOPPED) is switched off for the tasks the player owns.

Injection hooks emulate AWS's bad days: `fail_next_run_tasks` (no capacity),
`throttle_log_reads` (GetLogEvents ThrottlingException), `fail_next_task_starts`
(TaskFailedToStart), `interrupt` (Spot interruption); `count_calls` counts the
API calls clients made over HTTP.

A player plays the tasks created after its `start()`; tasks already on the
cluster (an earlier player's) are left alone, so one AwsEnvironment can serve
a module of tests, each with its own player. Only one AwsEnvironment (and one
FargatePlayer) may run at a time in a process: moto keeps its state in
process-wide backends, and the patches are process-wide too.

Typical use::

    with AwsEnvironment() as aws, FargatePlayer(aws) as player:
        operator = subprocess.Popen([...], env={**os.environ, **aws.env()})
        ...
        (task_arn,) = player.tasks()
        player.wait_all_stopped(timeout=60)
        assert player.output(task_arn)[-1].startswith("::agenttest:: ")

The modules, by concern: `aws` (the moto server and what it is provisioned
with), `ecsapi` (the ECS API where moto differs from ECS: the patches),
`tasks` (a task's life and its container's process), `awslogs` (the log
driver), `player` (the public face and the poll loop). `FargatePlayer` is one
class built from `state` -> `ecsapi` -> `tasks` -> `player`, each layer over
the last, because they share one state and one lock.
"""

from __future__ import annotations

from agenttest_dev.containers import Image
from agenttest_dev.fargate.aws import ACCOUNT_ID, REGION, AwsEnvironment, reset_moto, task_id
from agenttest_dev.fargate.player import Fargate, FargatePlayer, start_fargate
from agenttest_dev.fargate.state import DEFAULT_IMAGES

__all__ = [
    "ACCOUNT_ID",
    "DEFAULT_IMAGES",
    "REGION",
    "AwsEnvironment",
    "Fargate",
    "FargatePlayer",
    "Image",
    "reset_moto",
    "start_fargate",
    "task_id",
]
