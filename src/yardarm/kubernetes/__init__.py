"""The Kubernetes target: the Helm chart's values rendered from the deployment model, and
the release's controller (`python -m yardarm.kubernetes.controller`): the EndpointSlice
watch that feeds the gateway's routing document, and the rollout engine's effects on the
chart's Deployments."""
