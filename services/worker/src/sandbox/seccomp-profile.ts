// Imported (resolveJsonModule) rather than read from disk, so tsc copies the JSON next to this
// module in dist/ and ts-jest and tsx load it from the source tree alike.
import profile from './seccomp-profile.json';

/**
 * The seccomp profile every runc sandbox runs under (`seccomp-profile.json` beside this file, in
 * Docker's profile format), written for a uid-65534 container with every capability dropped.
 *
 * It is Docker's default allow list as it applies without capabilities, narrowed further. Anything
 * not allowed fails with EPERM (`defaultAction` SCMP_ACT_ERRNO; Engine 20.10 ignores
 * `defaultErrnoRet`, but runc's own default errno for that action is EPERM, so the result is the
 * same on newer engines that read it). runc makes syscalls newer than any the profile names fail
 * with ENOSYS, so libc can fall back. Denied in particular:
 *
 * - io_uring_setup/enter/register, userfaultfd, perf_event_open, bpf: large kernel surfaces with a
 *   history of privilege escalations and nothing a data-analysis cell needs;
 * - keyctl, add_key, request_key: the kernel keyring is not namespaced;
 * - ptrace, process_vm_readv/writev, kcmp, pidfd_getfd, process_madvise: reaching into other
 *   processes (under runc, the container's init among them);
 * - unshare, setns, clone with any CLONE_NEW* flag, and clone3 (ENOSYS, so glibc falls back to
 *   clone, whose flags seccomp can read): no new namespaces, so no user-namespace root;
 * - mount, umount, umount2, pivot_root, move_mount, open_tree, fsopen, fsconfig, fsmount, fspick,
 *   mount_setattr, chroot, name_to_handle_at, open_by_handle_at;
 * - kexec_load, kexec_file_load, init_module, finit_module, delete_module, swapon, swapoff, reboot,
 *   acct, quotactl, quotactl_fd, lookup_dcookie, syslog, vm86, vm86old, uselib, ustat, sysfs,
 *   _sysctl, nfsservctl, iopl, ioperm, sethostname, setdomainname, vhangup, fanotify_init;
 * - settimeofday, stime, clock_settime, adjtimex, clock_adjtime: the clock is the host's;
 * - get_mempolicy, set_mempolicy, mbind, move_pages;
 * - personality other than the values Docker allows (PER_LINUX, PER_LINUX32, UNAME26 and the
 *   query), and sockets of the AF_ALG and AF_VSOCK families, as current Docker releases do.
 *
 * The architectures are x86_64 (with x86 and x32) and aarch64 (with arm). Under runsc the profile
 * is not passed: gVisor ignores an OCI seccomp profile unless runsc runs with `--oci-seccomp`, and
 * its Sentry, not the host kernel, serves the sandbox's syscalls (SECURITY.md). Checked by
 * test/integration/seccomp.test.ts.
 */
export const SECCOMP_PROFILE_JSON: string = JSON.stringify(profile);

/** The `HostConfig.SecurityOpt` entry that applies the profile (what `docker run --security-opt seccomp=FILE` sends). */
export const SECCOMP_SECURITY_OPT = `seccomp=${SECCOMP_PROFILE_JSON}`;
