#!/bin/sh
# The compose file's `certs` service: a cluster CA and one identity per container, each in its own
# volume, so a container mounts only its own key. It runs once per `up`, as root (a new volume
# belongs to root), and issues only what is missing: keys survive `down` and a second `up`; `down -v`
# drops them with the data.
#
# Every file is then owned by the image's user (10001) and keys are 0600: the daemons refuse a key
# anyone but its owner can read.
set -eu

# Where the volumes are mounted (tests/test_deploy_compose.py runs this script in a directory).
ca=${CA_DIR:-/ca}
tls=${TLS_DIR:-/tls}

if [ ! -f "$ca/ca.pem" ]; then
    cpctl certs init --dir "$ca"
fi

# issue DIR ROLE NAME [--san HOST]...: ROLE-NAME.pem and its key in $tls/DIR, beside the CA's
# certificate; kept when both are there already.
issue() {
    dir=$tls/$1
    role=$2
    name=$3
    shift 3
    if [ -f "$dir/$role-$name.pem" ] && [ -f "$dir/$role-$name-key.pem" ]; then
        echo "$role $name: issued before, kept"
    else
        cpctl certs issue "$name" --role "$role" --dir "$ca" --out "$dir" "$@"
    fi
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
    chown -R 10001:10001 "$ca" "$tls"
fi
chmod 0700 "$ca" "$tls"/*
