#!/bin/sh
# PID 1 of the orchestrify demo container: reset the demo state, then serve HTTP on
# port 8000 until SIGTERM/SIGINT.
#
# The server is busybox `nc` in persistent-listen mode: it accepts each connection,
# forks, and runs /app/serve.sh with the socket as stdin/stdout (inetd style).
# busybox httpd is not used because it only runs CGI for URLs under /cgi-bin/ (or
# with a file suffix mapped to an interpreter), so it cannot answer /health or
# /admin/... from a script, and Debian's build lacks its reverse-proxy feature.
#
# busybox nc passes its count of -l flags to listen() as the backlog ("-ll" gives 2,
# which drops SYNs under a modest load test): 128 of them give a normal backlog.

rm -f /tmp/demo-unhealthy /tmp/demo-latency-ms

# serve.sh computes Content-Length with ${#body}, which counts characters, not bytes,
# in a UTF-8 locale: force the byte-counting C locale whatever the service's env says.
export LC_ALL=C

backlog_flags=-
i=0
while [ "$i" -lt 128 ]; do
    backlog_flags="${backlog_flags}l"
    i=$((i + 1))
done

# A shell as PID 1 only gets SIGTERM if it traps it; without this `docker stop`
# would wait for its timeout and then SIGKILL.
nc "$backlog_flags" -p 8000 -e /app/serve.sh &
server=$!
trap 'kill "$server" 2>/dev/null; exit 0' TERM INT
wait "$server"
