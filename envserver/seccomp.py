"""The seccomp profile of every container Forager starts (envs, graders, validation and other sandboxes).

Why a profile of our own: an env is root in its container on a btrfs data root (what `forager setup`
makes, for disk quotas), and root may create a btrfs subvolume with one ioctl, no capability needed. A
nested subvolume is outside its container's qgroup, so its data escapes the disk quota (measured: 2 GB
written inside a nested subvolume of a container limited to 600 MB). Docker's default profile allows that
ioctl, and Docker applies exactly one profile per container (they do not stack), so this profile carries
the default's denials itself:

- the system calls Docker's default profile blocks (its documentation lists them: kernel modules, keyrings,
  mount and the new mount API, namespaces, clocks, reboot, swap, accounting, bpf, perf events, userfaultfd,
  NUMA policy, handles, ...), each answered EPERM as there; `clone` only with a namespace flag, and `clone3`
  with ENOSYS (its flags are behind a pointer seccomp cannot read; glibc then falls back to `clone`), as
  Docker does; io_uring, which Docker's newer profiles block;
- the btrfs ioctls that create a subvolume or snapshot (matched on the 32 bits the kernel reads).

It allows what Docker's default allows on kernels >= 4.8 (ptrace of the container's own processes, for
debuggers). Capabilities are dropped as well (docker_backend.KEEP_CAPS), which gates most of the rest.
"""

from __future__ import annotations

import json

EPERM, ENOSYS = 1, 38

DENIED = [
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module", "finit_module",
    "fsconfig", "fsmount", "fsopen", "fspick", "get_kernel_syms", "get_mempolicy", "init_module", "io_uring_enter",
    "io_uring_register", "io_uring_setup", "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl",
    "lookup_dcookie", "mbind", "mount", "mount_setattr", "move_mount", "move_pages", "name_to_handle_at",
    "nfsservctl", "open_by_handle_at", "open_tree", "perf_event_open", "pivot_root", "query_module", "quotactl",
    "quotactl_fd", "reboot", "request_key", "set_mempolicy", "setns", "settimeofday", "swapoff", "swapon", "sysfs",
    "syslog", "_sysctl", "umount", "umount2", "unshare", "uselib", "userfaultfd", "ustat", "vm86", "vm86old",
]
CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000, "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000, "CLONE_NEWNET": 0x40000000,
}
BTRFS_CREATE_IOCTLS = {  # _IOW(0x94, nr, 4096-byte args)
    "BTRFS_IOC_SNAP_CREATE": 0x50009401, "BTRFS_IOC_SUBVOL_CREATE": 0x5000940E,
    "BTRFS_IOC_SNAP_CREATE_V2": 0x50009417, "BTRFS_IOC_SUBVOL_CREATE_V2": 0x50009418,
}


def profile() -> dict:
    def deny(name: str, errno: int = EPERM, **arg) -> dict:
        rule = {"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": errno}
        return {**rule, "args": [arg]} if arg else rule

    rules = [deny(name) for name in DENIED]
    rules += [deny("clone", index=0, value=flag, valueTwo=flag, op="SCMP_CMP_MASKED_EQ")
              for flag in CLONE_NAMESPACE_FLAGS.values()]
    rules.append(deny("clone3", ENOSYS))
    # the kernel reads an ioctl's request as 32 bits: compare those, so high bits cannot slip past
    rules += [deny("ioctl", index=1, value=0xFFFFFFFF, valueTwo=request, op="SCMP_CMP_MASKED_EQ")
              for request in BTRFS_CREATE_IOCTLS.values()]
    return {"defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], "syscalls": rules}


SECURITY_OPT = "seccomp=" + json.dumps(profile(), separators=(",", ":"))
