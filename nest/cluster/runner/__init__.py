"""The local node's process runner: our kubelet stand-in for `nest cluster up`.

It registers node `nest-local`, keeps it Ready, and runs every container of every pod bound to it
as a plain local process: command, args and env from the pod spec (downward API included), one
loopback address per pod (127.0.0.2 and up), volumes bind-mounted in a private mount namespace per
container, probes, restarts with back-off, graceful deletion, and logs under the state dir.

Modules: `main` (argv, pod watch, shutdown), `node` (Node, heartbeats, Lease), `pods` (one worker
per pod), `state` (container state machine, restart and back-off rules), `status` (pure status
computation), `env` (pure env resolution), `volumes`, `process` + `shim` (spawning), `probes`,
`layout` (state dir, IP allocation) and `logs`.

Leftovers of a previous runner instance are killed and restarted, not adopted. A process that is
not our child cannot be waited for, so its exit code - which decides between Completed and Error
and whether `OnFailure` restarts it - would be unknowable; restarting gives truthful statuses and
reuses the same NEST_LOCAL_NODE sweep that `nest cluster down` relies on. The pod's reported status
survives in the API server, so the restart shows up as restartCount + 1 with a `Killed` last state.
"""
