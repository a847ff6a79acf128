#!/bin/sh
# PID 1 of the orchestrify demo container: reset the demo state, then serve HTTP on
# port 8000 until SIGTERM (a graceful stop: in-flight requests finish) or SIGINT.
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

# in_flight: true while a request is being answered. nc runs each connection's
# /app/serve.sh in a process of its own (not our child once nc is gone), so look for
# them in /proc. ash's read drops the NULs between a cmdline's arguments ("/bin/sh",
# "/app/serve.sh"), and fails for want of a final newline although it read the line.
in_flight() {
    for cmdline in /proc/[0-9]*/cmdline; do
        args=
        IFS= read -r args 2>/dev/null <"$cmdline"
        case $args in /bin/sh/app/serve.sh*) return 0 ;; esac
    done
    return 1
}

# A graceful stop, as `docker stop` asks (SIGTERM, SIGKILL after the grace): say so,
# stop accepting (the listener exits and closes its socket: new connections are
# refused), let the requests in flight finish, then exit. Exiting PID 1 would kill them.
graceful_stop() {
    echo "received SIGTERM: no longer accepting connections, finishing requests in flight" >&2
    kill "$server" 2>/dev/null
    wait "$server" 2>/dev/null
    while in_flight; do
        sleep 0.05
    done
    echo "requests in flight finished; exiting" >&2
    exit 0
}

# A shell as PID 1 only gets SIGTERM if it traps it; without this `docker stop`
# would wait for its timeout and then SIGKILL.
nc "$backlog_flags" -p 8000 -e /app/serve.sh &
server=$!
trap graceful_stop TERM
trap 'kill "$server" 2>/dev/null; exit 0' INT
wait "$server"
