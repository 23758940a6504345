"""Container images of the services and the control plane (`yardarm images build`).

`specs` names the images and what each is built from, `wheels` gathers the wheelhouse
they install from (no index inside a build), `base` makes the Debian base for machines
without a registry, and `build` runs the builds, skipping every image whose inputs have
not changed. docs/containers.md is the user's side of it.
"""
