"""The rollout engine, target-agnostic: the judge that compares a canary with its
baseline, the metrics source it reads, and (with the controller) the strategies."""
