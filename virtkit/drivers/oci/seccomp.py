"""The default seccomp profile of a container: the runtime-spec `linux.seccomp` object, as data.

An allowlist in the spirit of Docker's default profile (moby profiles/seccomp): every syscall not
named here fails with EPERM. It is written for the default capability set (bundle.DEFAULT_CAPS),
so the syscalls Docker allows only with a capability we never grant are simply absent. Denied on
purpose, and so asserted by the unit tests (`DENIED`):

- new namespaces and mounts: mount, umount2, unshare, setns, pivot_root, the new mount API
  (fsopen, fsmount, move_mount, open_tree, ...), clone with a CLONE_NEW* flag; clone3 fails
  with ENOSYS (its flags live in memory that seccomp cannot read) so glibc falls back to clone;
- kernel-wide state that no namespace contains: bpf, perf_event_open, keyctl/add_key/request_key
  (the keyring is not namespaced), kexec_*, *_module, swapon/swapoff, reboot, acct, quotactl,
  syslog, settimeofday/clock_settime/stime, iopl/ioperm, open_by_handle_at (the "shocker"
  escape), userfaultfd, io_uring_* (a frequent source of kernel bugs; Docker 25 denies it too),
  lookup_dcookie, fanotify_init, vhangup, NUMA policy calls, kcmp/pidfd_getfd/process_madvise.

Allowed where Docker also allows it, with the reason kept next to the group: ptrace (seccomp is
re-checked after a tracer changes a syscall since Linux 4.8), adjtimex/clock_adjtime (read-only
without CAP_SYS_TIME, which the kernel checks), chroot (CAP_SYS_CHROOT is granted), and
`seccomp` itself (a filter can only narrow; systemd sandboxes its services with one).
personality is allowed for the values Docker allows (Linux, PER_LINUX32, UNAME26 and the query
0xffffffff); socket for every family but AF_VSOCK, which would reach the host's hypervisor sockets.

runc resolves names with libseccomp on the host and skips names it does not know (the
32-bit-only names on a 64-bit-only kernel, say), so one list serves every architecture below.
"""

from __future__ import annotations

from typing import Any

from virtkit.errors import SpecError

EPERM = 1
ENOSYS = 38
AF_VSOCK = 40
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET: any of them in clone's
# flags (argument 0 on x86 and arm) means a new namespace, refused without CAP_SYS_ADMIN anyway,
# but refused here before the kernel's namespace code is reached at all.
CLONE_NEW_MASK = 0x7E020000
PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)

ARCHITECTURES: dict[str, tuple[str, ...]] = {
    # The native ABI first, then the compat ABIs its kernel can also run.
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
}

# Process lifecycle, identity and credentials (the 32 suffix: 32-bit uid calls on x86/arm).
PROCESS = (
    "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "get_robust_list",
    "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32",
    "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getresgid", "getresgid32", "getresuid",
    "getresuid32", "getrlimit", "getrusage", "getsid", "gettid", "getuid", "getuid32", "kill",
    "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64", "restart_syscall", "rseq",
    "set_robust_list", "set_tid_address", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32",
    "setgid", "setgid32", "setgroups", "setgroups32", "setpgid", "setpriority", "setregid",
    "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32",
    "setrlimit", "setsid", "setuid", "setuid32", "tgkill", "times", "tkill", "ugetrlimit", "umask",
    "vfork", "wait4", "waitid", "waitpid",
)  # fmt: skip

# Signals and interval timers.
SIGNALS = (
    "alarm", "getitimer", "pause", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
    "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo", "setitimer", "sigaltstack", "signalfd", "signalfd4", "sigprocmask",
    "sigreturn",
)  # fmt: skip

# Memory: mappings, locking (bounded by RLIMIT_MEMLOCK), protection keys, memfd.
MEMORY = (
    "brk", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mlock", "mlock2",
    "mlockall", "mmap", "mmap2", "mprotect", "mremap", "msync", "munlock", "munlockall", "munmap",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "process_mrelease", "remap_file_pages",
)  # fmt: skip

# Files and directories by path or descriptor, their metadata, extended attributes and watches.
# name_to_handle_at only reads a handle (systemd uses it to find mount points); opening one by
# handle (open_by_handle_at) is what is dangerous, and is absent.
FILES = (
    "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "creat", "dup", "dup2",
    "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark",
    "fchdir", "fchmod", "fchmodat", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64",
    "fgetxattr", "flistxattr", "flock", "fremovexattr", "fsetxattr", "fstat", "fstat64",
    "fstatat64", "fstatfs", "fstatfs64", "ftruncate", "ftruncate64", "futimesat", "getcwd",
    "getdents", "getdents64", "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listxattr",
    "llistxattr", "lremovexattr", "lsetxattr", "lstat", "lstat64", "mkdir", "mkdirat", "mknod",
    "mknodat", "name_to_handle_at", "newfstatat", "open", "openat", "openat2", "readlink",
    "readlinkat", "removexattr", "rename", "renameat", "renameat2", "rmdir", "setxattr", "stat",
    "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "truncate", "truncate64",
    "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes",
)  # fmt: skip

# Reading and writing descriptors, pipes, zero-copy, syncing, Linux AIO (databases use it) and
# I/O priorities (bounded by the blkio cgroup). ioctl is not filtered, as in Docker: the device
# cgroup and the missing capabilities decide what an ioctl may touch.
IO = (
    "_llseek", "copy_file_range", "fdatasync", "fsync", "io_cancel", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "io_setup", "io_submit", "ioctl", "ioprio_get",
    "ioprio_set", "lseek", "pipe", "pipe2", "pread64", "preadv", "preadv2", "pwrite64", "pwritev",
    "pwritev2", "read", "readahead", "readv", "sendfile", "sendfile64", "splice", "sync",
    "sync_file_range", "syncfs", "tee", "vmsplice", "write", "writev",
)  # fmt: skip

# Waiting on many descriptors; event and timer descriptors.
POLLING = (
    "_newselect", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "poll", "ppoll",
    "ppoll_time64", "pselect6", "pselect6_time64", "select", "timerfd_create", "timerfd_gettime",
    "timerfd_gettime64", "timerfd_settime", "timerfd_settime64",
)  # fmt: skip

# Clocks and timers. adjtimex and clock_adjtime only read without CAP_SYS_TIME (never granted):
# glibc's ntp_gettime and time daemons' status checks use them. Setting the clock is absent.
TIME = (
    "adjtimex", "clock_adjtime", "clock_adjtime64", "clock_getres", "clock_getres_time64",
    "clock_gettime", "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64",
    "gettimeofday", "nanosleep", "time", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
)  # fmt: skip

# Threads, futexes and scheduling (affinity stays inside the cpuset cgroup). clone is below,
# filtered on its flags.
THREADS = (
    "futex", "futex_time64", "futex_waitv", "get_thread_area", "getcpu", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield",
    "set_thread_area",
)  # fmt: skip

# Sockets (the container has its own network namespace). socket itself is below, filtered on
# its family. socketcall is the 32-bit x86 multiplexer of all of these.
SOCKETS = (
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt", "listen",
    "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg", "sendmsg",
    "sendto", "setsockopt", "shutdown", "socketcall", "socketpair",
)  # fmt: skip

# System V and POSIX IPC (the container has its own IPC namespace).
IPC = (
    "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64",
    "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl", "msgget", "msgrcv", "msgsnd",
    "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "shmat", "shmctl", "shmdt",
    "shmget",
)  # fmt: skip

# Sandboxing a process further from inside: Landlock and seccomp filters only take rights away.
SANDBOXING = (
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "seccomp",
)  # fmt: skip

# Debuggers and strace inside the container: only its own processes are visible, and since Linux
# 4.8 a tracer cannot use ptrace to skip this filter. chroot: CAP_SYS_CHROOT is granted.
# uname and sysinfo describe the (namespaced) system. getrandom: OpenSSL 3 will not start
# without it (systemd-resolved, sshd: "PRNG is not seeded").
SYSTEM = (
    "chroot", "getrandom", "process_vm_readv", "process_vm_writev", "ptrace", "sysinfo", "uname",
)  # fmt: skip

GROUPS: tuple[tuple[str, ...], ...] = (
    PROCESS, SIGNALS, MEMORY, FILES, IO, POLLING, TIME, THREADS, SOCKETS, IPC, SANDBOXING, SYSTEM,
)  # fmt: skip

# Per architecture: x86 thread-local storage and LDT calls; the 32-bit arm compat calls.
ARCH_SYSCALLS: dict[str, tuple[str, ...]] = {
    "x86_64": ("arch_prctl", "modify_ldt"),
    "aarch64": ("arm_fadvise64_64", "arm_sync_file_range", "breakpoint", "cacheflush", "set_tls"),
}

# What must never be in the allowlist (tested); every other name is denied too, by default.
DENIED = (
    "acct", "add_key", "bpf", "clock_settime", "clock_settime64", "clone3", "delete_module",
    "fanotify_init", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "get_mempolicy",
    "init_module", "io_uring_enter", "io_uring_register", "io_uring_setup", "ioperm", "iopl",
    "kcmp", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mbind", "mount",
    "mount_setattr", "move_mount", "open_by_handle_at", "open_tree", "perf_event_open",
    "pidfd_getfd", "pivot_root", "process_madvise", "quotactl", "quotactl_fd", "reboot",
    "request_key", "set_mempolicy", "setdomainname", "sethostname", "setns", "settimeofday",
    "stime", "swapoff", "swapon", "syslog", "umount", "umount2", "unshare", "userfaultfd", "vhangup",
)  # fmt: skip


def allowed_syscalls(arch: str) -> tuple[str, ...]:
    """Every syscall allowed unconditionally on `arch`, sorted."""
    return tuple(sorted({name for group in GROUPS for name in group} | set(_arch_syscalls(arch))))


def default_profile(arch: str) -> dict[str, Any]:
    """The `linux.seccomp` object for a container on an `arch` host (platform.machine() names)."""
    allowed = allowed_syscalls(arch)  # first: it refuses an unknown arch
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": list(ARCHITECTURES[arch]),
        "syscalls": [
            {"names": list(allowed), "action": "SCMP_ACT_ALLOW"},
            *_filtered_rules(),
        ],
    }


def _arch_syscalls(arch: str) -> tuple[str, ...]:
    if arch not in ARCHITECTURES:
        raise SpecError(
            f"no seccomp profile for architecture {arch!r}",
            hint=f"containers run on {', '.join(sorted(ARCHITECTURES))} hosts",
        )
    return ARCH_SYSCALLS[arch]


def _filtered_rules() -> list[dict[str, Any]]:
    """The syscalls allowed only for some arguments. Several rules for one name are ORed."""
    return [
        # Argument 0 is the flags on x86 and arm (s390 swaps them; not supported here).
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": CLONE_NEW_MASK, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
        },
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}],
        },
        *(
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}],
            }
            for value in PERSONALITIES
        ),
    ]
