#!/bin/sh
# Every start: the host keys when missing (the first start), the login user's authorized
# keys from SSH_AUTHORIZED_KEYS, then supervisord as PID 1 (it runs sshd).
set -eu

keys=/home/deploy/.ssh/authorized_keys
if [ -n "${SSH_AUTHORIZED_KEYS:-}" ]; then
    printf '%s\n' "$SSH_AUTHORIZED_KEYS" > "$keys"
    chown deploy:deploy "$keys"
    chmod 0600 "$keys"
fi
if [ ! -s "$keys" ]; then
    echo "yardarm-host: set SSH_AUTHORIZED_KEYS to the public key(s) allowed to log in as deploy" >&2
    exit 64
fi

ssh-keygen -A > /dev/null
install -d -m 0755 /run/sshd
/usr/sbin/sshd -t

exec /usr/bin/supervisord -n -c /etc/supervisor/supervisord.conf
