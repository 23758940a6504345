"""The container target: the deployment model as a compose project of service
containers (`yardarm compose`), and the one-shot init the control image runs there."""
