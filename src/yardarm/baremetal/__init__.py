"""The bare-metal target: the stack as processes on plain Linux hosts, provisioned by
Ansible from an inventory rendered from the deployment model and a host list
(`yardarm ansible inventory`). Import the submodules: the CLI imports `commands` for
every command, `yardarm --help` included, so this package imports nothing itself."""
