# shellcheck shell=bash
# The images the container tests run, built offline (a debootstrap base and Debian's
# packages; no registry is reachable). Unchanged inputs rebuild nothing.
if ! _images_help=$(uv run yardarm images build --help 2>&1); then
  echo "\`yardarm images build\` is not available in this tree, so CI cannot build the" \
    "images the container tests (tests/integration) need:" >&2
  printf '%s\n' "$_images_help" | tail -n 5 >&2
  return 1
fi
unset _images_help
echo "--- building the images (offline, with the test images)"
uv run yardarm images build --offline --test-images

export YARDARM_IMAGE_POSTGRES=yardarm/postgres:15
export YARDARM_IMAGE_NATS=yardarm/nats:2
export YARDARM_IMAGE_HOST=yardarm/host:bookworm
