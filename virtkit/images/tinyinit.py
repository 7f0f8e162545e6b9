"""The guest side of the tiny image: its initramfs /init and the boot scripts of its busybox root.

Boot in a VM: the kernel runs the initramfs `/init` (INITRAMFS_INIT), which loads the modules
listed in /lib/modules/virtkit.load (passing it any `module.param=value` from the kernel command
line, as modprobe would), finds the root disk, mounts it, grows its filesystem when the disk is
bigger (`launch --disk`: resize2fs, online, logged on the console) and switch_root's into /sbin/init there;
without a disk it goes on from the initramfs, which holds the same root tree. /sbin/init is busybox
init: its sysinit script (RCS) mounts what is missing, names the host, starts DHCP in the background,
the power-button daemon and the command agent, then prints READY_MARKER on the console and on the
virtio-serial port named READY_PORT (the agent's and this port are waited for up to PORT_WAIT s in
the background: the driver may add them after the script looked). It acts as in a VM only when
the initramfs left VM_MARKER; in a container it only starts DHCP on interfaces the runtime left
unconfigured; anywhere else (a chroot on a host) it touches nothing and just prints the marker.

Kernel command line options read by the guest (all optional)::

    virtkit.root=/dev/vda | none    root device (default: /dev/vda, else /dev/sda; none: no disk)
    virtkit.rootwait=SECONDS        how long to wait for a named root device (default 10)
    virtkit.init=/sbin/init         what to run as PID 1 after the switch
    virtkit.hostname=NAME           host name (default: /etc/hostname)
    virtkit.debug                   trace the initramfs script on the console
"""

from __future__ import annotations

READY_MARKER = "VIRTKIT-READY"
READY_PORT = "org.virtkit.ready"
AGENT_PORT = "org.virtkit.agent"
AGENT_PATH = "/usr/lib/virtkit/agent"  # the in-guest command agent, started when present
FUNCTIONS_PATH = "/usr/lib/virtkit/functions"
UDHCPC_SCRIPT_PATH = "/etc/udhcpc/default.script"  # where busybox udhcpc looks by default
IFUP_PATH = "/usr/lib/virtkit/ifup"  # DHCP on a NIC that appears (boot or hot-plug), stopped when it goes
PORT_WAIT = 30  # s the boot script looks for a virtio-serial port that is not there yet
VM_MARKER = "/dev/.virtkit-vm"  # made by the initramfs; boot scripts act as in a VM only if present
MODULE_LIST_PATH = "/lib/modules/virtkit.load"  # "name /lib/modules/<release>/name.ko" per line
GROW_MIN = 4 << 20  # the root filesystem is grown when its disk is at least this much bigger

INITRAMFS_INIT = r"""#!/bin/sh
# virtkit tiny initramfs: load the modules, find the root disk, switch to it (or run from here).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
: > @VM_MARKER@  # tells the boot scripts they run in a VM (devtmpfs moves into the new root)

read -r cmdline < /proc/cmdline
root= rootwait=10 init=/sbin/init
set -f
for arg in $cmdline; do
	case "$arg" in
	virtkit.root=*) root=${arg#*=} ;;
	virtkit.rootwait=*) rootwait=${arg#*=} ;;
	virtkit.init=*) init=${arg#*=} ;;
	virtkit.debug) set -x ;;
	esac
done

set +f

# Module conditions: pci:VENDOR[:DEVICE], pciclass:CLASS (a prefix, 0106 is AHCI) and virtio:ID
# (2 is a block device) hold when such a device exists; a module without conditions always loads.
has_pci() {
	for dev in /sys/bus/pci/devices/*; do
		[ -r "$dev/vendor" ] && read -r value < "$dev/vendor" && [ "$value" = "0x$1" ] || continue
		[ -z "$2" ] && return 0
		read -r value < "$dev/device" && [ "$value" = "0x$2" ] && return 0
	done
	return 1
}
has_pciclass() {
	for f in /sys/bus/pci/devices/*/class; do
		[ -r "$f" ] && read -r value < "$f" && case "$value" in "0x$1"*) return 0 ;; esac
	done
	return 1
}
has_virtio() {
	for f in /sys/bus/virtio/devices/*/device; do
		[ -r "$f" ] && read -r value < "$f" && [ "$((value))" = "$1" ] && return 0
	done
	return 1
}
wanted() {
	[ $# -eq 0 ] && return 0
	for cond; do
		case "$cond" in
		pci:*:*) cond=${cond#pci:}; has_pci "${cond%:*}" "${cond#*:}" && return 0 ;;
		pci:*) has_pci "${cond#pci:}" "" && return 0 ;;
		pciclass:*) has_pciclass "${cond#pciclass:}" && return 0 ;;
		virtio:*) has_virtio "${cond#virtio:}" && return 0 ;;
		esac
	done
	return 1
}

# Modules in dependency order, each with its "name.param=value" options from the command line.
while read -r name file conditions; do
	wanted $conditions || continue
	args=
	set -f
	for arg in $cmdline; do
		case "$arg" in "$name".*=*) args="$args ${arg#"$name".}" ;; esac
	done
	set +f
	insmod "$file" $args || echo "virtkit: cannot load module $name" >&2
done < @MODULE_LIST@

found=
find_root() {
	for dev in ${root:-/dev/vda /dev/sda}; do
		if [ -b "$dev" ]; then found=$dev; return 0; fi
	done
	return 1
}
scsi_disk_seen() {
	for t in /sys/bus/scsi/devices/*:*:*:*/type; do
		[ -r "$t" ] && read -r kind < "$t" && [ "$kind" = 0 ] && return 0
	done
	return 1
}
if [ "$root" != none ] && ! find_root; then
	# libata probes its ports in the background; a write to "scan" returns once that is done.
	for scan in /sys/class/scsi_host/host*/scan; do
		[ -w "$scan" ] && echo "- - -" > "$scan"
	done
	# Wait (bounded) while a root was named or a SCSI disk is still becoming a block device.
	tries=$((rootwait * 50))
	while ! find_root && [ "$tries" -gt 0 ]; do
		[ -n "$root" ] || scsi_disk_seen || break
		usleep 20000
		tries=$((tries - 1))
	done
	[ -n "$found" ] || [ -z "$root" ] || echo "virtkit: root device $root not found" >&2
fi

# The disk may be bigger than its filesystem (virtkit launch --disk): grow the filesystem to fill
# it, online (mounted, so no fsck first), before switching to it. Nothing is done unless the disk
# is at least GROW_MIN larger (resize2fs leaves out a last block group too small for its metadata).
fs_bytes() {
	# ext4 superblock words from byte 1024: 1 blocks_count_lo, 6 log_block_size, 14 magic (low
	# half), 24 feature_incompat (0x80: 64bit), 84 blocks_count_hi
	set -- $(od -An -v -tu4 -j1024 -N340 "$1" 2>/dev/null)
	size=
	[ $# -eq 85 ] && [ $((${15} & 0xffff)) -eq $((0xef53)) ] || return 1
	hi=${85}
	[ $((${25} & 0x80)) -ne 0 ] || hi=0
	size=$((($2 + (hi << 32)) * (1024 << $7)))
}
centiseconds() {
	read -r up idle < /proc/uptime
	cs=${up#*.}
	cs=$((${up%.*} * 100 + ${cs#0}))
}
grow_root() {
	command -v resize2fs >/dev/null || return 0
	read -r sectors < "@SYSBLOCK@/${1##*/}/size" && fs_bytes "$1" || return 0
	disk=$((sectors * 512)) old=$size
	[ $((disk - old)) -ge @GROW_MIN@ ] || return 0
	echo "virtkit: growing the root filesystem on $1 from $((old >> 20)) MiB" \
		"to its disk's $((disk >> 20)) MiB"
	centiseconds
	start=$cs
	if out=$(resize2fs "$1" 2>&1) && fs_bytes "$1"; then
		centiseconds
		cs=$((cs - start))
		printf 'virtkit: root filesystem on %s grown online to %d MiB in %d.%02d s\n' \
			"$1" $((size >> 20)) $((cs / 100)) $((cs % 100))
	else
		printf '%s\n' "$out" | sed 's/^/virtkit: resize2fs: /'
		echo "virtkit: cannot grow the root filesystem on $1; it keeps its $((old >> 20)) MiB" >&2
	fi
}

if [ -n "$found" ]; then
	if mount -t ext4 -o rw,noatime "$found" /newroot; then
		grow_root "$found"
		if [ -e "/newroot$init" ] || [ -L "/newroot$init" ]; then
			mount --move /dev /newroot/dev
			mount --move /proc /newroot/proc
			mount --move /sys /newroot/sys
			exec switch_root /newroot "$init"
		fi
		echo "virtkit: $found has no $init" >&2
		umount /newroot
	fi
	echo "virtkit: cannot use $found as root; running from the initramfs" >&2
fi
exec "$init"
""".replace("@MODULE_LIST@", MODULE_LIST_PATH).replace("@VM_MARKER@", VM_MARKER).replace(
    "@SYSBLOCK@", "/sys/class/block").replace("@GROW_MIN@", str(GROW_MIN))

FUNCTIONS = r"""# virtkit tiny: shell functions shared by the boot scripts (sourced, not run).

# Sets $container when running in a container (the runtime's "container" variable, podman's
# /run/.containerenv, docker's /.dockerenv or a container= variable in PID 1's environment).
detect_container() {
	container=${container:-}
	[ -n "$container" ] && return 0
	if [ -e /run/.containerenv ] || [ -e /.dockerenv ]; then
		container=unknown
	elif tr '\0' '\n' < /proc/1/environ 2>/dev/null | grep -q '^container='; then
		container=unknown
	fi
	[ -n "$container" ]
}

# Sets $portdev to the device of the virtio-serial port named $1; fails when there is none.
find_port() {
	portdev=
	for f in /sys/class/virtio-ports/*/name; do
		[ -r "$f" ] || continue
		read -r n < "$f"
		if [ "$n" = "$1" ]; then
			f=${f%/name}
			portdev=/dev/${f##*/}
			[ -c "$portdev" ] && return 0
		fi
	done
	return 1
}

# As find_port, giving the port $2 seconds to appear where a virtio-serial device exists (elsewhere
# it fails at once): its driver adds the ports, then names them, when QEMU answers it, which on a
# busy host can be after the boot script got this far.
wait_port() {
	tries=$(($2 * 5))
	until find_port "$1"; do
		tries=$((tries - 1))
		[ "$tries" -ge 0 ] && has_serial || return 1
		sleep 0.2
	done
}

has_serial() {
	for d in /sys/bus/virtio/drivers/virtio_console/virtio*; do
		[ -e "$d" ] && return 0
	done
	return 1
}

# Sets $mode: "vm" when the tiny initramfs booted this system (it leaves @VM_MARKER@),
# "container" when a container runtime started it, "other" otherwise (a chroot, an unknown
# runtime, or run by hand rather than by PID 1): then the scripts leave alone everything they
# might share with a host (mounts, host name, network interfaces, serial ports, processes).
detect_mode() {
	if [ "$$" != 1 ] && [ "$PPID" != 1 ]; then
		mode=other
	elif detect_container; then
		mode=container
	elif [ -e @VM_MARKER@ ]; then
		mode=vm
	else
		mode=other
	fi
}

# Succeeds when something is mounted on $1 (as listed in $mounts, read once).
mounted() {
	case "$mounts" in *" $1 "*) return 0 ;; esac
	return 1
}
"""

RCS = r"""#!/bin/sh
# virtkit tiny: bring the system up, start the agent, say it is ready. Never waits for the network.
# Runs as busybox init's sysinit action (VM, system container) or by hand (sh -c, app container).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
. @FUNCTIONS@

detect_mode
if [ "$mode" = vm ]; then
	[ -e /proc/self ] || mount -t proc -o nosuid,nodev,noexec proc /proc
	mounts=$(cat /proc/mounts)
	mounted /sys || mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
	mounted /dev || mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
	mkdir -p /dev/pts /dev/shm
	mounted /dev/pts || mount -t devpts -o nosuid,noexec,gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
	mounted /dev/shm || mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
	mounted /run || mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
	mounted /tmp || mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
	name=
	read -r cmdline < /proc/cmdline
	for arg in $cmdline; do
		case "$arg" in virtkit.hostname=*) name=${arg#*=} ;; esac
	done
	[ -n "$name" ] || read -r name < /etc/hostname
	hostname "$name"
	printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost\n' "$name" >/etc/hosts
	# The power button (ACPI on x86, gpio-keys on arm) arrives as an input event.
	[ -e /dev/input/event0 ] && acpid -c /etc/acpi -l /dev/null
	# NICs hot-plugged later get DHCP too: mdev runs @IFUP@ for them (see /etc/mdev.conf).
	mdev -d
fi

if [ "$mode" = other ]; then
	echo @READY@
	exit 0
fi

# DHCP on the NICs nobody configured: all of a VM's; in a container only eth0, eth1, ... (should a
# runtime share the host's network namespace, the host's other interfaces stay untouched).
ip link set lo up 2>/dev/null
nics=/sys/class/net/*
[ "$mode" = container ] && nics=/sys/class/net/eth[0-9]*
for dev in $nics; do
	ifname=${dev##*/}
	{ [ "$ifname" = lo ] || [ ! -e "$dev" ]; } && continue
	ip -4 addr show dev "$ifname" 2>/dev/null | grep -q inet && continue
	ACTION=add MDEV=$ifname @IFUP@
done

# Both in the background: the ports may appear later, and a write to one blocks until the host
# side is connected. Neither may hold the boot.
if [ -x @AGENT@ ]; then
	(wait_port @AGENT_PORT@ @PORT_WAIT@ && while :; do @AGENT@ "$portdev"; sleep 1; done) \
		</dev/null >/dev/null 2>&1 &
fi
(wait_port @READY_PORT@ @PORT_WAIT@ && timeout 60 sh -c 'echo @READY@ > "$1"' sh "$portdev") \
	</dev/null >/dev/null 2>&1 &
echo @READY@
"""

RCK = r"""#!/bin/sh
# virtkit tiny: stop cleanly; busybox init runs this before poweroff, halt and reboot.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
. @FUNCTIONS@
detect_mode
[ "$mode" = other ] && exit 0
killall udhcpc acpid 2>/dev/null
sync
if [ "$mode" = vm ]; then
	umount -a -r 2>/dev/null
	mount -o remount,ro / 2>/dev/null
fi
"""

INITTAB = """\
::sysinit:/etc/init.d/rcS
::respawn:/usr/lib/virtkit/console
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/init.d/rcK
"""

# busybox init already made this a session leader: cttyhack turns the console into its terminal.
CONSOLE = """\
#!/bin/sh
# virtkit tiny: a root shell on the console when it is a terminal; else nothing (tty-less containers).
[ -t 0 ] && exec cttyhack sh -l
exec sleep 2147483647
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# udhcpc event script: apply a lease to the interface, the default route and /etc/resolv.conf.
case "$1" in
deconfig)
	ip -4 addr flush dev "$interface"
	ip link set dev "$interface" up
	;;
bound|renew)
	if ! ip -4 addr show dev "$interface" | grep -q " $ip/${mask:-24} "; then
		ip -4 addr flush dev "$interface"
		ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
	fi
	[ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
	if [ -n "$router" ]; then
		while ip route del default dev "$interface" 2>/dev/null; do :; done
		set -- $router
		ip route add default via "$1" dev "$interface"
	fi
	if [ -n "$dns" ]; then
		{
			[ -n "$domain" ] && echo "search $domain"
			for server in $dns; do echo "nameserver $server"; done
		} > /etc/resolv.conf
	fi
	;;
esac
exit 0
"""

IFUP = r"""#!/bin/sh
# virtkit tiny: a DHCP client for a NIC that appeared (ACTION=add: at boot, or from mdev on a
# hot-plug), ended when the NIC goes (ACTION=remove). MDEV names the interface.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
pidfile=/run/udhcpc.$MDEV.pid
case "$ACTION" in
add)
	[ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && exit 0
	ip link set "$MDEV" up 2>/dev/null
	udhcpc -f -R -i "$MDEV" -p "$pidfile" -s @UDHCPC@ -t 5 -T 1 -A 5 -x "hostname:$(hostname)" \
		</dev/null >/dev/null 2>&1 &
	;;
remove)
	[ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
	rm -f "$pidfile"
	;;
esac
exit 0
"""

# devtmpfs makes every device node; mdev (VMs only) must not touch them ("!": no node, so no chmod
# either; its start-up scan would otherwise reset /dev/null to 0660). It only runs IFUP for NICs.
MDEV_CONF = """\
SUBSYSTEM=net;eth[0-9]+ 0:0 600 ! *@IFUP@
.* 0:0 600 !
"""

POWER_BUTTON = """\
#!/bin/sh
# busybox acpid runs this on a power button press (ACPI PWRF event): a clean poweroff.
exec poweroff
"""

PROFILE = """\
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
[ "$HOME" = / ] && export HOME=/root
export PS1='\\h:\\w\\$ '
"""


def _fill(script: str) -> str:
    values = {
        "@FUNCTIONS@": FUNCTIONS_PATH,
        "@UDHCPC@": UDHCPC_SCRIPT_PATH,
        "@IFUP@": IFUP_PATH,
        "@AGENT_PORT@": AGENT_PORT,
        "@AGENT@": AGENT_PATH,
        "@READY_PORT@": READY_PORT,
        "@READY@": READY_MARKER,
        "@VM_MARKER@": VM_MARKER,
        "@PORT_WAIT@": str(PORT_WAIT),
    }
    for key, value in values.items():
        script = script.replace(key, value)
    return script


def guest_files(hostname: str, os_release: str) -> dict[str, tuple[str, int]]:
    """The files of the tiny root filesystem besides busybox: path -> (contents, mode)."""
    return {
        "etc/inittab": (INITTAB, 0o644),
        "etc/init.d/rcS": (_fill(RCS), 0o755),
        "etc/init.d/rcK": (_fill(RCK), 0o755),
        FUNCTIONS_PATH.lstrip("/"): (_fill(FUNCTIONS), 0o644),
        "usr/lib/virtkit/console": (CONSOLE, 0o755),
        IFUP_PATH.lstrip("/"): (_fill(IFUP), 0o755),
        "etc/mdev.conf": (_fill(MDEV_CONF), 0o644),
        UDHCPC_SCRIPT_PATH.lstrip("/"): (UDHCPC_SCRIPT, 0o755),
        "etc/acpi/PWRF/00000080": (POWER_BUTTON, 0o755),
        "etc/hostname": (f"{hostname}\n", 0o644),
        "etc/hosts": ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644),
        "etc/passwd": ("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:"
                       "/usr/sbin/nologin\n", 0o644),
        "etc/group": ("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n", 0o644),
        "etc/shadow": ("root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n", 0o640),
        "etc/profile": (PROFILE, 0o644),
        "etc/os-release": (os_release, 0o644),
    }
