#!/bin/bash
# dr-healthcheck PORT [PATH]: exit 0 when http://127.0.0.1:PORT/PATH answers
# 200, else 1. For compose healthchecks: the image has no curl or wget, so
# this speaks just enough HTTP/1.0 through bash's /dev/tcp.
#   dr-agent:   dr-healthcheck 9464 /healthz
#   dr-witness: dr-healthcheck 9601 /metrics
set -u
port=${1:?usage: dr-healthcheck PORT [PATH]}
path=${2:-/healthz}
{ exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || exit 1
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
IFS=' ' read -r -t 5 _version status _ <&3 || exit 1
[ "$status" = 200 ]
