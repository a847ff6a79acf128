#!/bin/sh
# One HTTP request of the orchestrify demo app. busybox nc runs this once per
# connection with the socket on stdin and stdout; every answer closes the connection.
#
#   ANY  /<anything else>        200 "<greeting> from <replica> (<METHOD>)" + the path,
#                                after the added latency; <greeting> is $GREETING
#                                (default "hello")
#   GET  /health                 200 "ok", or 500 "unhealthy" once switched off
#   GET  /admin/health?ok=0|1    switch /health off (500) or back on (200)
#   GET  /admin/latency?ms=N     add N ms (0..60000) to every later app request
#   GET  /admin/state            the current switches
#   GET  /admin/log?lines=N      print N (1..1000000) numbered lines on stdout
#
# State lives in files under /tmp so that it survives between requests (each request
# is its own process) and is private to the container.
#
# Every request is one line of the container's stdout ("METHOD TARGET STATUS"), so
# `docker logs` and `orchestrify service logs` have something to show.

UNHEALTHY_FLAG=/tmp/demo-unhealthy
LATENCY_FILE=/tmp/demo-latency-ms
REPLICA=${ORCHESTRIFY_REPLICA:-${HOSTNAME:-$(hostname)}}
GREETING=${GREETING:-hello}
CR=$'\r'  # busybox ash understands $'...'; $(printf) would cost a fork per request
set -f  # the request target must never glob

# respond STATUS REASON BODY [HEADER]: answer, log one line, end the request.
respond() {
    printf 'HTTP/1.1 %s %s\r\nContent-Type: text/plain; charset=utf-8\r\n' "$1" "$2"
    printf 'Content-Length: %s\r\nX-Replica: %s\r\n' "${#3}" "$REPLICA"
    [ -n "${4:-}" ] && printf '%s\r\n' "$4"
    printf 'Connection: close\r\n\r\n'
    [ "$method" = HEAD ] || printf '%s' "$3"
    # This process's stdout is the socket: the log line goes to PID 1's stdout, the
    # container's (stderr, also in the container's log, if that cannot be opened).
    printf '%s %s %s\n' "$method" "$target" "$1" 2>/dev/null >>/proc/1/fd/1 ||
        printf '%s %s %s\n' "$method" "$target" "$1" >&2
    exit 0
}

# query_param NAME: set $value to NAME's value in $query (empty, status 1, if absent).
query_param() {
    wanted=$1
    value=
    old_ifs=$IFS
    IFS='&'
    # Split on & on purpose (globbing is off).
    # shellcheck disable=SC2086
    set -- $query
    IFS=$old_ifs
    for pair in "$@"; do
        if [ "${pair%%=*}" = "$wanted" ]; then
            value=${pair#*=}
            return 0
        fi
    done
    return 1
}

method=
target=
IFS= read -r -t 10 request_line || exit 0
request_line=${request_line%"$CR"}
method=${request_line%% *}
rest=${request_line#* }
target=${rest%% *}
case $target in
    /*) ;;
    *) respond 400 "Bad Request" "bad request line
" ;;
esac
path=${target%%\?*}
query=
case $target in *\?*) query=${target#*\?} ;; esac

# Read the headers; the body must be read too, or closing the socket with unread
# bytes makes the kernel send RST and the client may lose the answer.
content_length=0
while IFS= read -r -t 10 header; do
    header=${header%"$CR"}
    [ -z "$header" ] && break
    case $header in
        [Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Ll][Ee][Nn][Gg][Tt][Hh]:*)
            content_length=${header#*:}
            content_length=${content_length# }
            ;;
    esac
done
case $content_length in
    '' | *[!0-9]*) respond 400 "Bad Request" "bad Content-Length
" ;;
esac
[ "${#content_length}" -gt 7 ] && respond 413 "Payload Too Large" "body over 1 MiB
"
[ "$content_length" -gt 1048576 ] && respond 413 "Payload Too Large" "body over 1 MiB
"
[ "$content_length" -gt 0 ] && head -c "$content_length" >/dev/null

case $path in
    /health)
        case $method in GET | HEAD) ;; *) respond 405 "Method Not Allowed" "use GET
" "Allow: GET, HEAD" ;; esac
        if [ -e "$UNHEALTHY_FLAG" ]; then
            respond 500 "Internal Server Error" "unhealthy
"
        fi
        respond 200 OK "ok
"
        ;;
    /admin/health)
        query_param ok
        case $value in
            0) : >"$UNHEALTHY_FLAG" ;;
            1) rm -f "$UNHEALTHY_FLAG" ;;
            *) respond 400 "Bad Request" "ok must be 0 or 1
" ;;
        esac
        [ "$value" = 1 ] && respond 200 OK "health: ok
"
        respond 200 OK "health: failing
"
        ;;
    /admin/latency)
        query_param ms
        case $value in
            '' | *[!0-9]*) respond 400 "Bad Request" "ms must be an integer from 0 to 60000
" ;;
        esac
        # Leading zeros would make shell arithmetic read the number as octal.
        ms=${value#"${value%%[!0]*}"}
        ms=${ms:-0}
        if [ "${#ms}" -gt 5 ] || [ "$ms" -gt 60000 ]; then
            respond 400 "Bad Request" "ms must be an integer from 0 to 60000
"
        fi
        printf '%s\n' "$ms" >"$LATENCY_FILE.$$" && mv -f "$LATENCY_FILE.$$" "$LATENCY_FILE"
        respond 200 OK "latency: $ms ms
"
        ;;
    /admin/state)
        health=ok
        [ -e "$UNHEALTHY_FLAG" ] && health=failing
        ms=0
        [ -r "$LATENCY_FILE" ] && read -r ms <"$LATENCY_FILE"
        respond 200 OK "replica: $REPLICA
health: $health
latency: $ms ms
"
        ;;
    /admin/log)
        query_param lines
        case $value in
            '' | *[!0-9]*) respond 400 "Bad Request" "lines must be an integer from 1 to 1000000
" ;;
        esac
        lines=${value#"${value%%[!0]*}"}
        if [ -z "$lines" ] || [ "${#lines}" -gt 7 ] || [ "$lines" -gt 1000000 ]; then
            respond 400 "Bad Request" "lines must be an integer from 1 to 1000000
"
        fi
        # One awk, not a shell loop: a million lines in about a second.
        awk -v r="$REPLICA" -v n="$lines" 'BEGIN { for (i = 1; i <= n; i++) print r " line " i " of " n }' \
            2>/dev/null >>/proc/1/fd/1 || exit 0
        respond 200 OK "logged $lines lines
"
        ;;
    /admin | /admin/*)
        respond 404 "Not Found" "unknown admin path $path
"
        ;;
esac

# Everything else is the application itself: slow down as asked, then say who we are.
ms=0
[ -r "$LATENCY_FILE" ] && read -r ms <"$LATENCY_FILE"
if [ "$ms" -gt 0 ]; then
    fraction=$((ms % 1000))
    case ${#fraction} in
        1) fraction=00$fraction ;;
        2) fraction=0$fraction ;;
    esac
    sleep "$((ms / 1000)).$fraction"
fi
respond 200 OK "$GREETING from $REPLICA ($method)
path: $path
"
