"""The local node's process runner: our kubelet stand-in for `nest cluster up`.

It registers node `nest-local`, keeps it Ready, and runs every container of every pod bound to it
as a local process: command, args and env from the pod spec (downward API included), one
loopback address per pod (127.0.0.2 and up), probes, restarts with back-off, graceful deletion,
and logs under the state dir. As root it also gives each container what the tenancy boundary
relies on in a real kubelet + runc:

- a private mount namespace with the volumes bind-mounted, runc's minimal /dev, masked and
  read-only /proc paths, read-only /sys, and `readOnlyRootFilesystem`;
- a PID namespace of its own with /proc remounted (PID 1 is the program, which therefore gets
  only the signals it handles), or the pod's with `shareProcessNamespace` (PID 1: a pause);
- its `securityContext`: runAsUser/runAsGroup/supplementalGroups/fsGroup, runAsNonRoot (refused
  with the kubelet's CreateContainerConfigError), capabilities from containerd's default set with
  add/drop or privileged, no_new_privs when allowPrivilegeEscalation is false;
- a cgroup with its memory/cpu limits, delegated to it at /sys/fs/cgroup (see `cgroups` for how
  this differs from a kubelet), OOM kills reported as `OOMKilled`;
- termination messages: a file of its own per instance at `terminationMessagePath`, read into
  `state.terminated.message` when it exits, or the log's tail under `FallbackToLogsOnError`
  (see `termination`, also for a runner that is not root);
- ServiceAccount tokens as 1.20 does: the legacy Secret token where admission put one (it honours
  automountServiceAccountToken), projected tokens from the TokenRequest API bound to the pod and
  renewed at 80% of their lifetime.
Not modelled: network namespaces (pods share the host's loopback), seccomp and AppArmor
profiles, user namespaces, per-pod /dev/shm and pod-level cgroup limits, images.

Modules: `main` (argv, the event loop, shutdown), `manager` (the pod watch, a `nest_kube.Informer`,
and its routing to workers), `kube` (the workers' API calls, run on the loop; tokens), `node`
(Node, heartbeats, Lease), `pods` (one worker thread per pod), `containers` (the pod sandbox:
credentials, cgroups, PID namespace per instance), `security` (securityContext resolution,
reaching the image), `termination`, `cgroups`, `state` (container state machine, restart and
back-off rules), `status` (pure status computation), `env` (pure env resolution), `volumes`,
`process` + `shim` + `shim_linux` (spawning), `probes`, `layout` (state dir, IP allocation) and
`logs`.

Leftovers of a previous runner instance are killed and restarted, not adopted. A process that is
not our child cannot be waited for, so its exit code - which decides between Completed and Error
and whether `OnFailure` restarts it - would be unknowable; restarting gives truthful statuses and
reuses the same NEST_LOCAL_NODE sweep that `nest cluster down` relies on. The pod's reported status
survives in the API server, so the restart shows up as restartCount + 1 with a `Killed` last state.
New runner code takes effect only when the runner restarts (`ControlPlane.restart_node`), but
shim.py is run anew for every container, so it keeps understanding the spec of older runners.
"""
