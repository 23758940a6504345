#!/bin/sh
# The first start makes the cluster (as the official image does, from POSTGRES_USER,
# POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE, POSTGRES_DB and POSTGRES_HOST_AUTH_METHOD),
# then every start runs Postgres in the foreground, listening on every address on 5432.
set -eu

if [ "${1:-postgres}" != postgres ]; then
    exec "$@"
fi
if [ $# -gt 0 ]; then shift; fi

# POSTGRES_PASSWORD_FILE, as the official image reads it: the password from a mounted file.
if [ -z "${POSTGRES_PASSWORD:-}" ] && [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
fi

user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
else
    auth=${POSTGRES_HOST_AUTH_METHOD:-trust}
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    trap 'rm -f "$pwfile"' EXIT
    printf '%s\n' "${POSTGRES_PASSWORD:-}" > "$pwfile"
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" -E UTF8 --no-locale \
            --auth-local=trust --auth-host="$auth" > /dev/null
    else
        initdb -D "$PGDATA" -U "$user" -E UTF8 --no-locale \
            --auth-local=trust --auth-host="$auth" > /dev/null
    fi
    rm -f "$pwfile"
    printf "listen_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
    printf 'host all all all %s\n' "$auth" >> "$PGDATA/pg_hba.conf"

    # Set up on the socket only, so nothing connects over TCP before it is done.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start > /dev/null
    if [ "$db" != postgres ]; then
        psql -v ON_ERROR_STOP=1 -q -U "$user" -d postgres \
            -c "CREATE DATABASE \"$db\"" > /dev/null
    fi
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
            *.sql) psql -v ON_ERROR_STOP=1 -q -U "$user" -d "$db" -f "$script" ;;
            *.sh) . "$script" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop > /dev/null
    echo "PostgreSQL init process complete; ready for start up."
fi

exec postgres -D "$PGDATA" "$@"
