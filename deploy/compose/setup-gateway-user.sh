#!/bin/sh
# The compose file's `setup` service, as the built-in admin: once the cluster is healthy, give the
# gateway's user (its certificate names client:gateway) the roles its console and node endpoints
# need, as deploy/kubernetes/README.md does by hand. Each step is skipped when already done, so a
# second `up`, or a run cut short, finishes the job.
set -eu

wait_s=600
deadline=$(($(date +%s) + wait_s))
until cpctl cluster health > /dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "the cluster was not healthy within $wait_s s:" >&2
        cpctl cluster health >&2 || true
        exit 1
    fi
    sleep 2
done

# has KIND NAME: whether `cpctl KIND list` names NAME.
has() {
    cpctl "$1" list --output json |
        python -c 'import json, sys; sys.exit(0 if any(x["name"] == sys.argv[1] for x in json.load(sys.stdin)) else 1)' "$2"
}

if ! has roles gateway; then
    cpctl roles add gateway
fi
# Granting a permission the role holds changes nothing.
for domain in kv ports models gossip cluster; do
    cpctl roles grant-permission gateway "$domain" read
done
cpctl roles grant-permission gateway membership write  # agents register and renew through it
if ! has users gateway; then
    cpctl users add gateway
fi
cpctl users grant gateway gateway
echo "the gateway's user holds the role gateway"
