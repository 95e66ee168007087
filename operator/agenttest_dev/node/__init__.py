"""A node for the test control plane: `FakeKubelet` plays kube-scheduler and a kubelet.

The dev cluster (agenttest_dev.devcluster) runs the real etcd, kube-apiserver and
kube-controller-manager but no scheduler and no kubelet, because this machine
has no container runtime. `FakeKubelet` fills that gap honestly, through the
real API server only, so that whatever creates pods (the operator's pod
backend, the Job controller, kubectl) sees what it would see on a cluster:

* **the node**: registers the Node ``node_name`` (created if absent), reports
  it Ready with InternalIP 127.0.0.1, capacity cpu 8 / memory 32Gi / pods 110,
  the kubelet endpoint port and a nodeInfo whose kubeletVersion is the API
  server's version, and posts a heartbeat every ``heartbeat_interval`` seconds.
  As no node lifecycle controller runs, it also lifts the not-ready taint that
  admission puts on every new node. `stop()` deletes the Node.
* **the scheduler**: binds every pod without ``spec.nodeName`` (in
  ``namespaces``, or all) whose schedulerName is the default one to the node,
  through the ``binding`` subresource as kube-scheduler does (which sets
  PodScheduled=True). A pod whose nodeSelector the node does not match, and
  every pod while `hold_pending()` is in force, gets PodScheduled=False
  (Unschedulable) instead, as kube-scheduler reports it.
* **the kubelet**: runs the first container of every pod bound to the node as
  a local process (own process group, scrubbed environment, stdout and stderr
  in one captured stream, every line timestamped), and reports the pod's
  status through ``pods/status`` like a kubelet: Pending/ContainerCreating,
  Running, then Succeeded or Failed with the container's exit code. It
  enforces ``activeDeadlineSeconds`` (DeadlineExceeded) and local
  ephemeral storage (an emptyDir over its ``sizeLimit``, the container over
  its ``ephemeral-storage`` limit: the pod is evicted with the kubelet's
  reason and message, see `storage`), honours graceful
  deletion (SIGTERM, SIGKILL after min(grace, 5) s, then the kubelet's final
  delete with gracePeriodSeconds=0) and serves ``/containerLogs`` over HTTPS
  so that ``kubectl logs`` and the ``pods/log`` API work through the real
  API server (timestamps, sinceTime, sinceSeconds, tailLines, limitBytes,
  follow).

How a container becomes a process
---------------------------------
``images`` maps an image (a full reference, or a repository: registry host and
tag are ignored) to its ENTRYPOINT. Any image whose repository ends with
``runner`` (``agenttest/runner:0.1.0``) is the runner image, whose entrypoint
is this interpreter's ``-m agenttest.runner``. Docker's rules apply:
``container.command`` replaces the entrypoint, ``container.args`` are appended;
``$(VAR)`` references are expanded from the container's env as Kubernetes does.
An image the mapping does not know fails to pull (ErrImagePull, then
ImagePullBackOff, message "image not known to the fake kubelet").

Pod volumes become per-pod directories: ``emptyDir`` an empty one,
``configMap`` / ``secret`` (and ``projected`` sources of those kinds) one file
per key (``items`` honoured; a missing ConfigMap or Secret keeps the pod in
ContainerCreating until it appears, as a kubelet retries the mount). Then every
occurrence of a volumeMount's ``mountPath`` that starts a path in the command,
the args and the container's env values is rewritten to the host directory
(``--config /etc/agenttest/config.json`` -> ``--config <pod>/volumes/config/
config.json``); ``workingDir`` likewise (a path outside every mount is created
under the pod's directory). Env ``valueFrom`` supports ``fieldRef``,
``configMapKeyRef`` and ``secretKeyRef``; ``envFrom`` both of its kinds.

The process's environment is PATH (this interpreter's bin directory first),
LANG, PYTHONUNBUFFERED=1, HOSTNAME, HOME and TMPDIR (per-pod directories;
TMPDIR is the volume mounted at /tmp if there is one), then the container's
env. Nothing of this process's own environment leaks in.

What it does not do (the pod fails with reason ``UnsupportedByFakeKubelet``
and the container terminates with StartError where noted): volumes other than
the ones above (fails), env ``resourceFieldRef`` (fails), containers after the
first and init containers (ignored), restart policies other than Never
(treated as Never), probes, CPU and memory limits (use `oom_kill_next()`), and
``securityContext``: processes run as this process's user, with a writable
filesystem. Admission (Pod Security) is the API server's and is real.

Typical use::

    with FakeKubelet(cluster.kubeconfig, namespaces=[namespace]) as kubelet:
        ...create a pod...
        (pod,) = kubelet.wait_for_pods(1)
        kubelet.wait_finished(*pod)
        assert kubelet.output(*pod)[-1].startswith("::agenttest:: ")

Only one FakeKubelet per node name may run at a time; two with different
node names must watch disjoint namespaces (both would bind the same pods).

The modules, by concern: `state` (what a node keeps, the API calls, events),
`registration` (the Node and the scheduler), `podspec` (a container spec ->
volumes, environment, argv), `runtime` (the container's process and the pod's
status), `logs` (/containerLogs over HTTPS), `kubelet` (the watch and the
public face). One class, `FakeKubelet`, is built from them, each module one
layer over the last, because they share one state and one lock.
"""

from __future__ import annotations

from agenttest_dev.node.kubelet import FakeKubelet
from agenttest_dev.node.state import (
    DEADLINE_MESSAGE,
    IMAGE_NOT_KNOWN,
    SELECTOR_MISMATCH,
    SHUTDOWN_MESSAGE,
    UNSCHEDULABLE_MESSAGE,
    UNSUPPORTED,
    KubeError,
)

__all__ = [
    "DEADLINE_MESSAGE",
    "IMAGE_NOT_KNOWN",
    "SELECTOR_MISMATCH",
    "SHUTDOWN_MESSAGE",
    "UNSCHEDULABLE_MESSAGE",
    "UNSUPPORTED",
    "FakeKubelet",
    "KubeError",
]
