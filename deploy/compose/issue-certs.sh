#!/bin/sh
# The compose file's `certs` service: a cluster CA and one identity per container, each in its own
# volume, so a container mounts only its own key. It runs on every `up`, as root (a new volume
# belongs to root), and issues what is missing, due (within 30 days of its end), lacks a name, or
# was signed by another CA; everything else is kept. After a renewal, restart the services
# (`docker compose restart`) to load the new certificates. `down -v` drops them with the data.
#
# Identities are then owned by the image's user (10001), keys 0600: the daemons refuse a key anyone
# but its owner can read. The CA stays root's: no daemon runs as root.
set -eu

# Where the volumes are mounted (tests/test_deploy_compose.py runs this script in a directory).
ca=${CA_DIR:-/ca}
tls=${TLS_DIR:-/tls}
renew_before_days=30

if [ ! -f "$ca/ca.pem" ]; then
    if [ -f "$ca/ca-key.pem" ]; then
        echo "error: $ca holds a CA key without its certificate (ca.pem): an earlier run was cut short." >&2
        echo "Remove ca-key.pem from the volume (nothing was issued from it), or docker compose down -v to start over." >&2
        exit 2
    fi
    cpctl certs init --dir "$ca"
fi

# issue DIR ROLE NAME [--san HOST]...: ROLE-NAME.pem and its key in $tls/DIR, beside the CA's certificate.
issue() {
    dir=$tls/$1
    role=$2
    name=$3
    shift 3
    cpctl certs issue "$name" --role "$role" --dir "$ca" --out "$dir" --renew-before "$renew_before_days" "$@"
    cp "$ca/ca.pem" "$dir/ca.pem"
}

# Servers are reached by their service names inside the network and as localhost through the ports
# published on the host.
for server in n1 n2 n3; do
    issue "$server" server "$server" --san "$server" --san localhost
done
# The gateway: a client of the servers (client:gateway), and an HTTPS server to them, which verify
# it with the cluster CA, and to the host (localhost:8080). Its HTTPS certificate is a web one: it
# names hosts and no identity, so the gateway's keys give no more than the user `gateway` holds.
issue gateway client gateway
issue gateway web gateway --san gateway --san localhost --san 127.0.0.1
for agent in node-1 node-2; do
    issue "$agent" agent "$agent" --san "$agent"
done
# The built-in admin (it holds every permission): the `setup` and `cpctl` services' identity.
issue admin client admin

if [ "$(id -u)" = 0 ]; then
    chown -R 10001:10001 "$tls"/*
fi
chmod 0700 "$ca" "$tls"/*
