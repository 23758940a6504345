"""The Pulumi program (`main: infra/` in Pulumi.yaml); everything is in `yardarm_infra`."""

from yardarm_infra.program import main

main()
