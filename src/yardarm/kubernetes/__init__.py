"""The Kubernetes target: the Helm chart's values rendered from the deployment model,
and (later) the rollout engine's and the routing document's Kubernetes adapters."""
