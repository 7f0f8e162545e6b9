"""The tiny image's command agent: a busybox `sh` script serving `virtkit exec` over a virtio-serial port.

The tiny image's boot script starts it as ``/usr/lib/virtkit/agent /dev/vportNpM`` when the port
named ``org.virtkit.agent`` exists (and again 1 s after it exits). Without an argument it serves
stdin/stdout and exits when stdin ends, which is how tests run it on a host.

The protocol (the host side is virtkit.drivers.qemu.agent) is one header line per message,
some followed by raw bytes whose lengths the header gives; the port is a byte stream, not a tty::

    host -> guest   PING <nonce>
    guest -> host   PONG <nonce>
    host -> guest   EXEC <id> <seconds> <argv bytes> <stdin bytes>, then argv (each argument
                    followed by a NUL byte), then stdin
    guest -> host   RESULT <id> <ok|timeout|toolarge> <exit code> <stdout bytes> <stderr bytes>,
                    then stdout, then stderr (none for toolarge)
    guest -> host   ERROR <id> <reason>  (the request was read but refused)

The argv reaches the program exactly: ``xargs -0`` turns the NUL-separated file into arguments
of a fixed ``sh -c '"$@"'`` (so the exit code is the program's, not xargs's); no shell ever parses
them. Output goes through FIFOs into files, each capped at OUTPUT_MAX bytes (past the cap the
program gets SIGPIPE and the result says toolarge). As with ssh, the result comes once every
holder of stdout and stderr has closed them. A watchdog kills the program's whole process group
(it runs under setsid) after <seconds> and the result says timeout; the agent stays usable.

While no host is connected a virtio-serial port reads as end-of-file at once, and writes block
until one connects: the agent polls every IDLE_SECONDS (a read with a timeout on a private FIFO,
no process forked), and a reply cut off by a host leaving is finished to the next host, which
resynchronises by sending PING with a fresh nonce and skipping everything before its PONG.
"""

from __future__ import annotations

from virtkit.units import KiB, MiB

OUTPUT_MAX = 16 * MiB  # per stream (stdout, stderr), and for stdin
ARGV_MAX = 128 * KiB  # all arguments with their NUL terminators; Linux takes 128 KiB per argument
IDLE_SECONDS = 0.1

_SCRIPT = r"""#!/bin/sh
# virtkit tiny: the command agent (see virtkit/images/tinyagent.py for the protocol).
# Usage: agent [PORT]; without PORT it serves stdin/stdout and exits when stdin ends.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 022
cap=@OUTPUT_MAX@
argv_max=@ARGV_MAX@

work=$(mktemp -d "${TMPDIR:-/tmp}/virtkit-agent.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT
trap 'exit 1' INT TERM HUP
# Reading this FIFO (open at both ends, never written) is a sleep that forks nothing.
mkfifo "$work/idle" && exec 6<>"$work/idle" || exit 1

if [ $# -gt 0 ]; then
	exec 3<>"$1" 4>&3 || exit 1
	port=$1
else
	exec 3<&0 4>&1 </dev/null >/dev/null
	port=
fi
cd /

reply() {
	printf '%s\n' "$*" >&4
}

number() {
	case $1 in '' | *[!0-9]*) return 1 ;; esac
}

# Reads exactly $1 bytes of the request into the file $2; fails when the host left before.
receive() {
	dd bs=65536 count="$1" iflag=count_bytes,fullblock of="$2" <&3 2>/dev/null || return 1
	[ "$2" = /dev/null ] || [ "$(stat -c %s "$2")" = "$1" ]
}

# EXEC <id> <seconds> <argv bytes> <stdin bytes>
serve_exec() {
	id=$1 secs=$2 alen=$3 ilen=$4
	d=$work/run
	rm -rf "$d"
	if [ "$alen" -eq 0 ] || [ "$alen" -gt "$argv_max" ] || [ "$ilen" -gt "$cap" ]; then
		receive "$alen" /dev/null && receive "$ilen" /dev/null && reply "ERROR $id request-too-large"
		return
	fi
	if ! mkdir "$d"; then
		receive "$alen" /dev/null && receive "$ilen" /dev/null && reply "ERROR $id no-space-for-a-workdir"
		return
	fi
	receive "$alen" "$d/argv" && receive "$ilen" "$d/in" || return  # the host left: drop it
	case $secs in
	'' | *[!0-9.]* | *.*.* | .* | *.) reply "ERROR $id bad-timeout"; return ;;
	esac
	mkfifo "$d/o" "$d/e" || { reply "ERROR $id no-space-for-a-workdir"; return; }
	head -c $((cap + 1)) <"$d/o" >"$d/out" 3>&- 4>&- 6>&- &
	r1=$!
	head -c $((cap + 1)) <"$d/e" >"$d/err" 3>&- 4>&- 6>&- &
	r2=$!
	# The fixed script runs the arguments xargs appends as they are (xargs reads them on fd 0,
	# the program's stdin comes on fd 7); fd 5 carries the exit code.
	setsid xargs -0 -s $((argv_max * 2)) sh -c '"$@" <&7 7<&- 5>&-; echo $? >&5' sh \
		<"$d/argv" 7<"$d/in" >"$d/o" 2>"$d/e" 5>"$d/rc" 3>&- 4>&- 6>&- &
	pid=$!
	# On time out: kill the program's process group, let the readers save what it wrote.
	setsid sh -c 'sleep "$1" && : >"$2" && kill -KILL -"$3" "$3"; sleep 1; kill -KILL "$4" "$5"' sh \
		"$secs" "$d/timedout" "$pid" "$r1" "$r2" </dev/null >/dev/null 2>&1 3>&- 4>&- 6>&- &
	dog=$!
	wait "$pid" 2>/dev/null
	xrc=$?
	wait "$r1"
	wait "$r2"
	kill -KILL -"$dog" "$dog" 2>/dev/null
	wait "$dog" 2>/dev/null
	rc=
	[ -s "$d/rc" ] && read -r rc <"$d/rc"
	number "$rc" || rc=$xrc  # the wrapper never ran (killed first, or xargs failed)
	status=ok
	[ -e "$d/timedout" ] && status=timeout
	set -- $(stat -c %s "$d/out" "$d/err")
	if [ "$1" -gt "$cap" ] || [ "$2" -gt "$cap" ]; then
		reply "RESULT $id toolarge $rc 0 0"
	else
		reply "RESULT $id $status $rc $1 $2"
		[ "$1" -eq 0 ] && [ "$2" -eq 0 ] || cat "$d/out" "$d/err" >&4
	fi
	rm -rf "$d"
}

while :; do
	if ! read -r verb id a b c rest <&3; then
		[ -n "$port" ] || exit 0
		read -r -t @IDLE@ _ <&6  # no host connected: wait a little, read again
		continue
	fi
	case "$verb" in
	PING) reply "PONG $id" ;;
	EXEC) number "$b" && number "$c" && serve_exec "$id" "$a" "$b" "$c" ;;
	esac
done
"""

AGENT: str = (
    _SCRIPT.replace("@OUTPUT_MAX@", str(OUTPUT_MAX))
    .replace("@ARGV_MAX@", str(ARGV_MAX))
    .replace("@IDLE@", str(IDLE_SECONDS))
)
