#!/bin/sh
# The compose file's `setup` service, as the built-in admin: once the cluster is healthy, give the
# gateway's user (its certificate names client:gateway) the roles its console and inventory reads
# need, as deploy/kubernetes/README.md does by hand. Adding what exists changes nothing, so a
# second `up`, or a run cut short, finishes the job.
#
# Not granted here: membership write, which only agents that register through the gateway need
# (deploy/kubernetes/README.md). The agents of this file talk to the servers directly.
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

cpctl roles add gateway
for domain in kv ports models gossip cluster membership; do
    cpctl roles grant-permission gateway "$domain" read
done
cpctl users add gateway
cpctl users grant gateway gateway
echo "the gateway's user holds the role gateway"
